"""MetaBIN's training method on a tiny metabin CNN: which parameters each half updates, the gate
range, running statistics, the first-order update against a manual computation, the second-order
gradient against finite differences, the inner-step cycle, and a few iterations of ``Engine.fit``."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from reidflow.errors import ConfigError
from reidflow.losses import TripletLoss, inter_domain_shuffle_loss, intra_domain_scatter_loss
from reidflow.models.norms import MetaBatchInstanceNorm2d, running_stats_held
from reidflow.models.reid_model import ReIDModel, build_reid_model
from reidflow.train.engine import Engine, EngineConfig, StepContext
from reidflow.train.metabin import (
    CyclicInnerLR,
    MetaBINMethod,
    MetaStepConfig,
    build_metabin_optimizers,
    clamp_virtual,
    split_domains,
    split_parameters,
)
from reidflow.train.optim import OptimizerConfig, SchedulerConfig, build_scheduler
from reidflow.train.pretrain import LossConfig

NUM_CLASSES = 6  # 3 domains × 2 identities


# ------------------------------------------------------------------------------------------------
# a tiny world


class TinyMetaBINBackbone(nn.Module):
    out_channels = 6

    def __init__(self, rho_init: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.norm1 = MetaBatchInstanceNorm2d(4, rho_init=rho_init)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.norm2 = MetaBatchInstanceNorm2d(6, rho_init=rho_init)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(x)))


def tiny_model(rho_init: float = 0.5, dtype: torch.dtype = torch.float32, seed: int = 0) -> ReIDModel:
    torch.manual_seed(seed)
    model = ReIDModel(TinyMetaBINBackbone(rho_init), pool="avg", num_classes=NUM_CLASSES)
    with torch.no_grad():  # IN affine and BN affine differ, so the gates matter in the gradient checks
        for module in model.modules():
            if isinstance(module, MetaBatchInstanceNorm2d):
                module.in_weight.uniform_(0.5, 1.5)
                module.in_bias.uniform_(-0.3, 0.3)
    return model.to(dtype).train()


def meta_batch(t: int, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """3 domains × 2 identities × 2 images, domains contiguous, a pure function of ``t``."""
    g = torch.Generator().manual_seed(1000 + t)
    domains = torch.arange(3).repeat_interleave(4)
    pids = torch.arange(6).repeat_interleave(2)
    images = torch.randn(12, 3, 8, 8, generator=g, dtype=torch.float64) + domains.view(-1, 1, 1, 1)
    return {"image": images.to(dtype), "pid": pids, "domain": domains}


class ImagesDataset(Dataset):
    def __init__(self, n: int = 24, dtype: torch.dtype = torch.float32) -> None:
        g = torch.Generator().manual_seed(7)
        self.images = torch.randn(n, 3, 8, 8, generator=g).to(dtype)
        self.pids = torch.arange(n) % NUM_CLASSES

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "pid": self.pids[i]}


class PKBatchSampler:
    """Fixed batches of 3 identities × 2 images, order from (seed, epoch); resumable."""

    def __init__(self, n: int = 24, seed: int = 0) -> None:
        self.n, self.seed, self.epoch, self._skip = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, num_batches: int) -> None:
        self._skip = num_batches

    def __len__(self) -> int:
        return 4

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        start, self._skip = self._skip, 0
        for _ in range(start):
            rng.permutation(NUM_CLASSES)
        for _ in range(start, len(self)):
            ids = rng.permutation(NUM_CLASSES)[:3]
            yield [int(i + NUM_CLASSES * k) for i in ids for k in range(2)]


def make_method(
    model: nn.Module,
    rho_lr: float = 0.01,
    second_order: bool = False,
    inner: CyclicInnerLR | None = None,
    dtype: torch.dtype = torch.float32,
    **meta: Any,
) -> MetaBINMethod:
    theta_opt, rho_opt = build_metabin_optimizers(
        model, OptimizerConfig(lr=0.05, momentum=0.9, weight_decay=5e-4), rho_lr
    )
    sched = SchedulerConfig(kind="constant")
    return MetaBINMethod(
        model,
        theta_opt,
        rho_opt,
        build_scheduler(theta_opt, sched, 4),
        build_scheduler(rho_opt, sched, 4),
        LossConfig(),
        NUM_CLASSES,
        nn.Identity(),
        lambda t: meta_batch(t, dtype),
        inner or CyclicInnerLR(rho_lr * 10, low=0.1, high=1.0, period_iters=4),
        MetaStepConfig(n_mtrain=2, second_order=second_order, **{"warmup_iters": 0, **meta}),
        seed=3,
    )


def engine_context(method: MetaBINMethod, iteration: int = 1) -> StepContext:
    """The real engine's StepContext, bound to the method (CPU, no AMP), at ``iteration``."""
    loader = DataLoader(ImagesDataset(), batch_sampler=PKBatchSampler())
    engine = Engine(method, loader, EngineConfig(max_iters=1, device="cpu"), default_hooks=False)
    engine.bind()
    engine.ctx.iteration = iteration
    return engine.ctx


def base_batch(dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    data = ImagesDataset(dtype=dtype)
    idx = [0, 6, 1, 7, 2, 8]
    return {"image": data.images[idx], "pid": data.pids[idx]}


def gates_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".rho")}


def theta_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith(".rho")}


def buffers_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers()}


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def assert_all_changed(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    unchanged = [n for n in a if torch.equal(a[n], b[n])]
    assert not unchanged, unchanged


# ------------------------------------------------------------------------------------------------
# pieces


def test_cyclic_inner_lr_is_a_triangle() -> None:
    cyc = CyclicInnerLR(0.1, low=1e-3, high=1e-1, period_iters=100)
    assert cyc.ratio(0) == pytest.approx(1e-3)
    assert cyc.ratio(25) == pytest.approx((1e-3 + 1e-1) / 2)  # half way up
    assert cyc.ratio(50) == pytest.approx(1e-1)  # top at half period
    assert cyc.ratio(75) == pytest.approx((1e-3 + 1e-1) / 2)  # half way down
    assert cyc.ratio(100) == pytest.approx(1e-3)  # low again at the period
    assert cyc.ratio(150) == pytest.approx(1e-1)
    assert cyc.value(50) == pytest.approx(0.1 * 1e-1)  # times the rho lr
    rising = [cyc.ratio(t) for t in range(51)]
    assert rising == sorted(rising)
    restored = CyclicInnerLR(1.0, period_iters=2)
    restored.load_state_dict(json.loads(json.dumps(cyc.state_dict())))
    assert [restored.value(t) for t in range(0, 200, 7)] == [cyc.value(t) for t in range(0, 200, 7)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0.0, "period_iters": 10},
        {"base": 1.0, "low": 0.5, "high": 0.1, "period_iters": 10},
        {"base": 1.0, "period_iters": 1},
    ],
)
def test_cyclic_inner_lr_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="CyclicInnerLR"):
        CyclicInnerLR(**kwargs)


def test_split_parameters_separates_the_gates() -> None:
    model = tiny_model()
    theta, gates = split_parameters(model)
    assert [g.shape[0] for g in gates] == [4, 6]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}  # the BNNeck bias is frozen
    assert {id(p) for p in theta} | {id(g) for g in gates} == trainable
    assert not {id(p) for p in theta} & {id(g) for g in gates}
    with pytest.raises(ConfigError, match="norm='metabin'"):
        split_parameters(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))


def test_split_parameters_on_a_built_metabin_osnet() -> None:
    model = build_reid_model({"backbone": "osnet_x0_25", "norm": "metabin", "num_classes": 4})
    theta, gates = split_parameters(model)
    assert len(gates) > 10 and all(torch.all(g == 1.0) for g in gates)  # init 1: starts as pure BN
    assert len(theta) + len(gates) == len([p for p in model.parameters() if p.requires_grad])


def test_split_domains_is_seeded_by_iteration() -> None:
    domains = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    masks = [split_domains(domains, 2, seed=0, iteration=t) for t in range(12)]
    assert all(int(m.sum()) == 4 for m in masks)
    assert torch.equal(masks[5], split_domains(domains, 2, seed=0, iteration=5))
    assert len({tuple(m.tolist()) for m in masks}) > 1  # the split changes with the iteration
    with pytest.raises(ConfigError, match="n_mtrain=3 needs at least"):
        split_domains(torch.tensor([0, 1, 2]), 3, seed=0, iteration=0)


def test_optimizers_must_split_theta_and_rho() -> None:
    model = tiny_model()
    _, gates = split_parameters(model)
    good_theta, good_rho = build_metabin_optimizers(model, OptimizerConfig(), 0.1)
    assert {id(p) for g in good_rho.param_groups for p in g["params"]} == {id(g) for g in gates}
    assert good_rho.defaults["momentum"] == 0 and good_rho.defaults["weight_decay"] == 0
    sched = build_scheduler(good_theta, SchedulerConfig(kind="constant"), 1)
    args = (
        sched,
        sched,
        LossConfig(),
        NUM_CLASSES,
        nn.Identity(),
        meta_batch,
        CyclicInnerLR(1, period_iters=2),
    )
    with pytest.raises(ConfigError, match="'theta' optimizer holds gate"):
        MetaBINMethod(model, torch.optim.SGD(model.parameters(), lr=0.1), good_rho, *args)
    with pytest.raises(ConfigError, match="'rho' optimizer must hold exactly"):
        MetaBINMethod(model, good_theta, torch.optim.SGD(gates[:1], lr=0.1), *args)


# ------------------------------------------------------------------------------------------------
# what each half of the step touches


def test_base_step_updates_theta_and_running_stats_not_rho() -> None:
    model = tiny_model()
    method = make_method(model)
    ctx = engine_context(method)
    rho, theta, buffers = gates_of(model), theta_of(model), buffers_of(model)
    out = method.base_step(base_batch(), ctx)
    assert_same(rho, gates_of(model))
    changed = [n for n in theta if not torch.equal(theta[n], theta_of(model)[n])]
    assert "backbone.conv1.weight" in changed and "classifier.weight" in changed
    assert not torch.equal(buffers["backbone.norm1.bn.running_mean"], model.backbone.norm1.bn.running_mean)
    assert {"ce", "triplet", "acc"} <= out.keys()


def test_meta_step_updates_only_rho_and_holds_running_stats() -> None:
    model = tiny_model()
    method = make_method(model)
    ctx = engine_context(method)
    rho, theta, buffers = gates_of(model), theta_of(model), buffers_of(model)
    out = method.meta_step(meta_batch(1), ctx)
    assert_same(theta, theta_of(model))
    assert_same(buffers, buffers_of(model))  # metabin BN branches and the BNNeck, counters included
    assert_all_changed(rho, gates_of(model))
    expected_keys = {"mtrain_scatter", "mtrain_shuffle", "mtrain_triplet", "mtest_triplet", "beta"}
    assert expected_keys <= out.keys()
    assert out["beta"] == pytest.approx(method.inner_lr.value(1))
    assert all(torch.isfinite(torch.as_tensor(v)) for v in out.values())


def test_gates_stay_in_unit_interval() -> None:
    model = tiny_model(rho_init=0.9)
    # huge outer steps (the clamp must hold them); a small β keeps ρ' inside (0, 1) so gradients flow
    method = make_method(model, rho_lr=50.0, inner=CyclicInnerLR(0.01, period_iters=4))
    ctx = engine_context(method)
    for t in range(3):
        ctx.iteration = t
        method.step(base_batch(), ctx)
        rho = torch.cat(list(gates_of(model).values()))
        assert rho.min() >= 0.0 and rho.max() <= 1.0
    assert bool(((rho == 0) | (rho == 1)).any())  # the steps did reach a boundary


def test_meta_batch_without_domains_is_rejected() -> None:
    method = make_method(tiny_model())
    batch = meta_batch(0)
    del batch["domain"]
    with pytest.raises(ConfigError, match=r"lacks keys \['domain'\]"):
        method.meta_step(batch, engine_context(method))


# ------------------------------------------------------------------------------------------------
# the meta gradient


def _meta_train_loss(model: nn.Module, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
    features = model(batch["image"][mask], batch["pid"][mask])["features"]
    pids, domains = batch["pid"][mask], batch["domain"][mask]
    return (
        intra_domain_scatter_loss(features, domains)
        + inter_domain_shuffle_loss(features, pids, domains)
        + TripletLoss(margin=0.3)(features, pids)
    )


def _meta_test_loss(model: nn.Module, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
    return TripletLoss(margin=0.3)(
        model(batch["image"][~mask], batch["pid"][~mask])["features"], batch["pid"][~mask]
    )


def _gate_list(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith(".rho")]


def test_first_order_update_matches_manual_computation() -> None:
    dtype = torch.float64
    model = tiny_model(dtype=dtype)
    rho_lr, iteration = 0.01, 1
    method = make_method(model, rho_lr=rho_lr, dtype=dtype)
    ctx = engine_context(method, iteration)
    reference = copy.deepcopy(model)
    before = gates_of(model)
    method.meta_step(meta_batch(iteration, dtype), ctx)
    applied = {n: gates_of(model)[n] - before[n] for n in before}

    # by hand: ρ' = clamp(ρ - β ∇ρ L_mtr) written INTO the module, then ∂L_mte/∂ρ' by plain backward;
    # first order: ∂ρ'/∂ρ = 1 inside (0, 1), so SGD applies Δρ = -lr · ∂L_mte/∂ρ'.
    batch = meta_batch(iteration, dtype)
    mask = split_domains(batch["domain"], 2, seed=3, iteration=iteration)
    beta = method.inner_lr.value(iteration)
    gates = _gate_list(reference)
    with running_stats_held(reference):
        inner = torch.autograd.grad(_meta_train_loss(reference, batch, mask), gates)
        with torch.no_grad():
            for g, d in zip(gates, inner, strict=True):
                g.copy_(g - beta * d)
        assert all(bool(((g > 0) & (g < 1)).all()) for g in gates)  # no clamp active
        _meta_test_loss(reference, batch, mask).backward()
    expected = {n: -rho_lr * p.grad for n, p in reference.named_parameters() if n.endswith(".rho")}
    assert expected.keys() == applied.keys()
    for name, value in expected.items():
        assert value.abs().max() > 1e-6, name  # a real gradient, not an all-zero pass
        torch.testing.assert_close(applied[name], value, rtol=1e-7, atol=1e-12)


def _meta_objective(
    model: nn.Module, rho: list[Tensor], batch: dict[str, Tensor], mask: Tensor, beta: float
) -> float:
    """L_mte(clamp(ρ - β ∇ρ L_mtr(ρ))) evaluated numerically at ``rho``."""
    probe = copy.deepcopy(model)
    gates = _gate_list(probe)
    with torch.no_grad():
        for g, value in zip(gates, rho, strict=True):
            g.copy_(value)
    with running_stats_held(probe):
        inner = torch.autograd.grad(_meta_train_loss(probe, batch, mask), gates)
        with torch.no_grad():
            for g, d in zip(gates, inner, strict=True):
                g.copy_((g - beta * d).clamp(0.0, 1.0))
            return float(_meta_test_loss(probe, batch, mask))


def test_second_order_gradient_matches_finite_differences() -> None:
    dtype = torch.float64
    model = tiny_model(dtype=dtype)
    rho_lr, iteration = 1e-3, 2  # iteration 2: β at the top of the cycle
    method = make_method(model, rho_lr=rho_lr, second_order=True, dtype=dtype)
    ctx = engine_context(method, iteration)
    reference = copy.deepcopy(model)
    before = [g.detach().clone() for g in _gate_list(model)]
    method.meta_step(meta_batch(iteration, dtype), ctx)
    applied_grad = [-(g.detach() - b) / rho_lr for g, b in zip(_gate_list(model), before, strict=True)]

    batch = meta_batch(iteration, dtype)
    mask = split_domains(batch["domain"], 2, seed=3, iteration=iteration)
    beta = method.inner_lr.value(iteration)
    eps = 1e-6
    for layer, channel in [(0, 0), (0, 3), (1, 1), (1, 5)]:
        plus = [b.clone() for b in before]
        minus = [b.clone() for b in before]
        plus[layer][channel] += eps
        minus[layer][channel] -= eps
        numeric = (
            _meta_objective(reference, plus, batch, mask, beta)
            - _meta_objective(reference, minus, batch, mask, beta)
        ) / (2 * eps)
        analytic = float(applied_grad[layer][channel])
        assert abs(numeric) > 1e-4
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9), (layer, channel)


# ------------------------------------------------------------------------------------------------
# the engine


def _fit(tmp_path: Path, max_iters: int, resume: bool = False) -> tuple[MetaBINMethod, list[dict[str, Any]]]:
    model = tiny_model(rho_init=1.0)
    method = make_method(model, rho_lr=0.1)
    loader = DataLoader(ImagesDataset(), batch_sampler=PKBatchSampler())
    cfg = EngineConfig(max_iters=max_iters, device="cpu", checkpoint_every=2, seed=5)
    result = Engine(method, loader, cfg, tmp_path, default_hooks=False).fit(resume=resume)
    return method, result.history


def test_engine_fit_trains_and_resumes_exactly(tmp_path: Path) -> None:
    straight, history = _fit(tmp_path / "straight", 4)
    assert len(history) == 4
    for record in history:
        for key in ("ce", "triplet", "mtrain_scatter", "mtrain_shuffle", "mtest_triplet", "beta", "lr/rho"):
            assert np.isfinite(record[key]), key
    rho = torch.cat(list(gates_of(straight.model).values()))
    assert rho.min() >= 0 and rho.max() <= 1 and bool((rho < 1).any())  # gates left pure BN

    _fit(tmp_path / "cut", 2)
    resumed, _ = _fit(tmp_path / "cut", 4, resume=True)
    assert_same(gates_of(straight.model), gates_of(resumed.model))
    assert_same(theta_of(straight.model), theta_of(resumed.model))


# -- fidelity to the authors' code: straight-through virtual clamp, warm-up, CE in the meta losses


def test_straight_through_clamp_passes_gradient_everywhere() -> None:
    raw = torch.tensor([-0.5, 0.2, 0.7, 1.3], requires_grad=True)
    clamp_virtual(raw, "straight_through").sum().backward()
    assert raw.grad is not None and torch.equal(raw.grad, torch.ones(4))
    assert torch.equal(clamp_virtual(raw.detach(), "straight_through"), torch.tensor([0.0, 0.2, 0.7, 1.0]))
    raw.grad = None
    clamp_virtual(raw, "differentiable").sum().backward()
    assert torch.equal(raw.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def _saturated_gates_after_meta_step(kind: str) -> tuple[Tensor, Tensor]:
    """Gates at 1 with an inner step that pushes some past 1: (which were pushed out, ρ after the step)."""
    model = tiny_model(rho_init=1.0)
    inner_lr = CyclicInnerLR(50.0, low=1.0, high=1.0, period_iters=4)
    method = make_method(model, rho_lr=1.0, inner=inner_lr, virtual_clamp=kind)
    ctx = engine_context(method)
    batch = meta_batch(1)
    # the inner gradient of the meta-train loss, computed as the method does, tells which gates leave [0, 1]
    named = {n: p for n, p in model.named_parameters() if n.endswith(".rho")}
    mtrain = split_domains(batch["domain"], 2, method.seed, 1)
    with running_stats_held(model):
        feats = model(batch["image"][mtrain], batch["pid"][mtrain])["features"]
        loss = (
            intra_domain_scatter_loss(feats, batch["domain"][mtrain])
            + inter_domain_shuffle_loss(feats, batch["pid"][mtrain], batch["domain"][mtrain])
            + method.loss.triplet(feats, batch["pid"][mtrain])
        )
        inner = torch.autograd.grad(loss, list(named.values()))
    pushed_out = torch.cat([(1.0 - 50.0 * g) > 1.0 for g in inner])
    method.meta_step(batch, ctx)
    return pushed_out, torch.cat([p.detach().flatten() for p in named.values()])


def test_saturated_gates_still_learn_with_the_straight_through_clamp() -> None:
    """ρ = 1 with a negative inner gradient (ρ - β·g > 1): the authors' clamp lets the meta-test
    gradient through, so such gates can still move; the differentiable clamp freezes every one of them."""
    pushed, rho_st = _saturated_gates_after_meta_step("straight_through")
    assert bool(pushed.any()), "the test needs gates pushed past 1 by the inner step"
    assert bool((rho_st[pushed] < 1.0).any())
    pushed_d, rho_d = _saturated_gates_after_meta_step("differentiable")
    assert torch.equal(pushed, pushed_d)
    assert bool((rho_d[pushed_d] == 1.0).all())


def test_warmup_iterations_are_base_steps_only() -> None:
    model = tiny_model()
    method = make_method(model, warmup_iters=2)
    ctx = engine_context(method)
    for t in range(2):
        ctx.iteration = t
        rho = gates_of(model)
        out = method.step(base_batch(), ctx)
        assert_same(rho, gates_of(model))
        assert not any(k.startswith(("mtrain_", "mtest_")) for k in out)
    ctx.iteration = 2
    rho = gates_of(model)
    out = method.step(base_batch(), ctx)
    assert "mtest_triplet" in out
    assert_all_changed(rho, gates_of(model))


def test_ce_joins_the_meta_losses_when_weighted() -> None:
    method = make_method(tiny_model(), ce_weight=1.0)
    out = method.meta_step(meta_batch(1), engine_context(method))
    assert {"mtrain_ce", "mtest_ce"} <= out.keys()
    assert float(out["mtrain_ce"]) > 0 and float(out["mtest_ce"]) > 0
    other = make_method(tiny_model())
    plain = other.meta_step(meta_batch(1), engine_context(other))
    assert "mtrain_ce" not in plain and "mtest_ce" not in plain


def test_gate_trajectory_is_logged_every_n_iterations() -> None:
    method = make_method(tiny_model())
    method.gate_log_every = 2
    ctx = engine_context(method)
    logged = []
    for t in range(4):
        ctx.iteration = t
        logged.append(any(k.startswith("rho/") for k in method.step(base_batch(), ctx)))
    assert logged == [True, False, True, False]
