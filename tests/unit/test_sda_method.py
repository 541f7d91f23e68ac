"""The SDA method through the real engine on tiny random images: every loss, frozen encoders, plain
CycleGAN at relation weight 0, the GAN schedule, and exact resume (image pools included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reidflow.data.sampling import IdentityBatchSampler
from reidflow.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform
from reidflow.errors import ConfigError
from reidflow.models.reid_model import build_reid_model
from reidflow.models.sda import DiscriminatorConfig, GeneratorConfig, build_discriminator, build_generator
from reidflow.train.engine import Engine, EngineConfig, seed_everything
from reidflow.train.optim import OptimizerConfig, build_optimizer
from reidflow.train.sda import (
    ConstantThenLinearLR,
    EncoderInput,
    GanScheduleConfig,
    RelationConfig,
    SDALossConfig,
    SDAMethod,
    build_gan_scheduler,
)

torch.set_num_threads(1)
H, W = 16, 8
ADAM = OptimizerConfig(name="adam", lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0)


class Images(Dataset):
    def __init__(self, n: int = 24, ids: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, H, W), generator=g, dtype=torch.uint8)
        self.pids = np.arange(n) % ids

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "pid": int(self.pids[i])}


TARGET = torch.randint(0, 256, (10, 3, H, W), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)


def target_batch(iteration: int, device: torch.device) -> torch.Tensor:
    rows = np.random.default_rng((5, iteration)).choice(len(TARGET), 4, replace=False)
    return TARGET[rows].to(device)


def encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_reid_model({"backbone": "osnet_x0_25", "num_classes": 6}).eval()
    return EncoderInput(model, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_MEAN, IMAGENET_STD, (32, 16))


def method(relation_weight: float = 1.0, online: bool = False, pool: int = 3, warmup: int = 0) -> SDAMethod:
    seed_everything(0)
    g = {
        n: build_generator(GeneratorConfig(ngf=4, n_blocks=1), IMAGENET_MEAN, IMAGENET_STD)
        for n in ("g_st", "g_ts")
    }
    d = {n: build_discriminator(DiscriminatorConfig(ndf=4, n_layers=1)) for n in ("d_s", "d_t")}
    named_g = [(f"{k}.{n}", p) for k, m in g.items() for n, p in m.named_parameters()]
    named_d = [(f"{k}.{n}", p) for k, m in d.items() for n, p in m.named_parameters()]
    g_opt, d_opt = build_optimizer(named_g, ADAM), build_optimizer(named_d, ADAM)
    schedule = GanScheduleConfig(constant_epochs=1, decay_epochs=2)
    e_s, e_t = (encoder(1), encoder(2)) if relation_weight else (None, None)
    e_opt = build_optimizer(e_t, OptimizerConfig(name="adam", lr=1e-4)) if online else None
    tcfg = {"height": H, "width": W, "pad": 2, "erasing_p": 0.0}
    return SDAMethod(
        g,
        d,
        g_opt,
        d_opt,
        build_gan_scheduler(g_opt, schedule, 3),
        build_gan_scheduler(d_opt, schedule, 3),
        SDALossConfig(relation_weight=relation_weight, pool_size=pool),
        build_train_transform(tcfg),
        target_batch,
        source_encoder=e_s,
        target_encoder=e_t,
        relation=RelationConfig(online=online),
        encoder_optimizer=e_opt,
        encoder_scheduler=build_gan_scheduler(e_opt, schedule, 3) if e_opt else None,
        num_classes=6,
        identity_warmup_iters=warmup,
    )


def engine(m: SDAMethod, ckpt: Path | None, max_iters: int) -> Engine:
    data = Images()
    sampler = IdentityBatchSampler(data.pids, 3, 2, seed=0)
    loader = DataLoader(data, batch_sampler=sampler)
    cfg = EngineConfig(max_iters=max_iters, iters_per_epoch=3, device="cpu", checkpoint_every=2, log_every=1)
    return Engine(m, loader, cfg, checkpoint_dir=ckpt, default_hooks=False)


def weights(m: SDAMethod) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t.clone() for k, mod in m.modules().items() for n, t in mod.state_dict().items()}


def test_every_loss_is_logged_and_only_gan_networks_learn():
    m = method()
    frozen = {k: t.clone() for k, t in m.encoders["target_encoder"].state_dict().items()}
    before = weights(m)
    result = engine(m, None, 2).fit()
    last = result.history[-1]
    assert {"g_gan", "cycle", "identity", "relation", "d_s", "d_t"} <= set(last)
    assert all(np.isfinite(last[k]) for k in ("g_gan", "cycle", "identity", "relation", "d_s", "d_t"))
    after = weights(m)
    for name in ("g_st", "g_ts", "d_s", "d_t"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(name + ".")), name
    for k, t in m.encoders["target_encoder"].state_dict().items():
        assert torch.equal(t, frozen[k]), f"frozen encoder changed: {k}"  # BN running stats included
    assert not any(p.requires_grad for e in m.encoders.values() for p in e.parameters())


def test_relation_weight_zero_is_plain_cyclegan():
    m = method(relation_weight=0.0)
    assert set(m.modules()) == {"g_st", "g_ts", "d_s", "d_t"}
    last = engine(m, None, 1).fit().history[-1]
    assert "relation" not in last and {"g_gan", "cycle", "identity"} <= set(last)
    with pytest.raises(ConfigError, match="needs a source and a target encoder"):
        SDAMethod(m.generators, m.discriminators, m.g_optimizer, m.d_optimizer, m.g_scheduler, m.d_scheduler,
                  SDALossConfig(relation_weight=1.0), m.transform, target_batch)  # fmt: skip


def test_online_variant_trains_the_target_encoder():
    m = method(online=True)
    before = {k: t.clone() for k, t in m.encoders["target_encoder"].state_dict().items()}
    last = engine(m, None, 2).fit().history[-1]
    assert {"relation", "encoder_ce", "encoder_triplet"} <= set(last)
    after = m.encoders["target_encoder"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    source = m.encoders["source_encoder"]
    assert not any(p.requires_grad for p in source.parameters()) and not source.training


def test_gan_schedule_constant_then_linear_to_zero():
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = ConstantThenLinearLR(opt, constant_iters=4, decay_iters=4)
    assert [sched.factor(t) for t in (0, 3, 4, 6, 8, 20)] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == [2e-4] * 5 and lrs[-1] == 0.0


def test_resume_is_exact_with_image_pools(tmp_path):
    """Stopped at iteration 2 and resumed to 5 gives the weights (and pools) of an uninterrupted 5-iteration run."""
    full = method()
    engine(full, tmp_path / "full", 5).fit()
    first = method()
    engine(first, tmp_path / "cut", 2).fit()
    assert first.pools["fake_t"].count > 0
    resumed = method()
    engine(resumed, tmp_path / "cut", 5).fit(resume=True)
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("fake_t", "fake_s"):
        assert torch.equal(
            full.pools[name].state_dict()["images"], resumed.pools[name].state_dict()["images"]
        )


def test_bf16_autocast_step_is_finite():
    m = method()
    data = Images()
    loader = DataLoader(data, batch_sampler=IdentityBatchSampler(data.pids, 3, 2, seed=0))
    cfg = EngineConfig(max_iters=1, iters_per_epoch=3, device="cpu", amp="bf16", log_every=1)
    last = Engine(m, loader, cfg, default_hooks=False).fit().history[-1]
    assert all(np.isfinite(last[k]) for k in ("g_gan", "cycle", "identity", "relation", "d_s", "d_t"))


def test_identity_warmup_trains_only_the_generators_towards_the_identity():
    m = method(warmup=2)
    before = weights(m)
    history = engine(m, None, 2).fit().history
    assert [h["g_gan"] for h in history] == [0.0, 0.0] and all(h["warmup_identity"] > 0 for h in history)
    after = weights(m)
    for name in ("d_s", "d_t"):  # the discriminators rest
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(name + ".")), name
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("g_st."))
    m = method(warmup=1)  # then the full objective
    last = engine(m, None, 2).fit().history[-1]
    assert last["g_gan"] > 0 and last["d_s"] > 0 and "warmup_identity" not in last
