"""MetaBIN training (Choi et al. 2021, Algorithm 1): a base step on θ, then a meta step on the gates ρ.

Per iteration ``t``:

1. **Base step** on the engine's batch: CE (label smoothing) + batch-hard triplet; only θ (every
   parameter except the gates) is updated; running statistics are updated as usual.
2. **Meta step** on ``meta_batches(t)`` (a domain-balanced batch): the domains are shuffled with a
   generator seeded from ``(seed, t)``; the first ``n_mtrain`` are meta-train, the rest meta-test.
   With running statistics held, the meta-train loss ``L_scat + L_shuf + L_tri`` gives
   ``g = ∇ρ L_mtr``; the virtual gates are ``ρ' = clamp(ρ - β·g, 0, 1)`` (``g`` detached unless
   ``second_order``); the meta-test triplet loss is computed through ρ' with
   :func:`torch.func.functional_call` and its gradient (reaching ρ through ρ') updates ρ only.

The clamp of the virtual gates is straight-through by default, as in the authors' code: it clamps
the values only, so ``∂ρ'/∂ρ = 1`` even where ``ρ - β·g`` leaves [0, 1]. A differentiable clamp
(``virtual_clamp: differentiable``) gives zero meta-test gradient to every gate pushed past a bound;
gates start at 1, so it silences a large share of them from the first meta step on. The first
``warmup_iters`` iterations are base steps only. ``ce_weight`` adds the classification loss to the
meta-train and meta-test losses (the authors' single-source recipe).

β is :class:`CyclicInnerLR` at meta step ``t`` (derived from the iteration, so nothing extra is
checkpointed). After each update the gates are clamped to [0, 1]. Every ``gate_log_every``
iterations the step also reports the gates' per-stage statistics (:mod:`reidflow.train.gate_log`).

Every forward goes through the raw module and gradients are averaged with ``sync_grads=True``:
restricting backward to θ or ρ would leave DDP waiting for the other group's gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from reidflow.config import StrictModel
from reidflow.errors import ConfigError
from reidflow.losses import inter_domain_shuffle_loss, intra_domain_scatter_loss
from reidflow.models.norms import clamp_gates_, gate_parameters, running_stats_held, twice_differentiable
from reidflow.train.engine import StepContext
from reidflow.train.gate_log import gate_trajectory_metrics
from reidflow.train.optim import OptimizerConfig, build_optimizer
from reidflow.train.pretrain import LossConfig, SupervisedLoss, loss_dtype
from reidflow.train.runtime import move_to_device

MetaBatches = Callable[[int], dict[str, Tensor]]


class CyclicInnerLR:
    """Triangular cycle of the inner step size: ``base × ratio(t)``, ratio from ``low`` up to ``high`` and back.

    The ratio is ``low`` at ``t = 0``, ``high`` at ``t = period_iters / 2`` and ``low`` again at
    ``t = period_iters`` (half rising, half falling, linear), repeating.
    """

    def __init__(self, base: float, low: float = 1e-3, high: float = 1e-1, *, period_iters: int) -> None:
        if base <= 0:
            raise ConfigError(f"CyclicInnerLR: base (the rho learning rate) must be > 0, got {base}")
        if not 0 <= low <= high:
            raise ConfigError(f"CyclicInnerLR: expected 0 <= low <= high, got low={low}, high={high}")
        if int(period_iters) < 2:
            raise ConfigError(f"CyclicInnerLR: period_iters must be >= 2, got {period_iters}")
        self.base = float(base)
        self.low = float(low)
        self.high = float(high)
        self.period_iters = int(period_iters)

    def ratio(self, meta_step: int) -> float:
        if meta_step < 0:
            raise ConfigError(f"CyclicInnerLR: meta_step must be >= 0, got {meta_step}")
        phase = (meta_step % self.period_iters) / self.period_iters  # in [0, 1)
        rise = 1.0 - abs(2.0 * phase - 1.0)  # 0 -> 1 -> 0 over the period
        return self.low + (self.high - self.low) * rise

    def value(self, meta_step: int) -> float:
        """β at ``meta_step`` (0-based)."""
        return self.base * self.ratio(meta_step)

    def state_dict(self) -> dict[str, float | int]:
        return {"base": self.base, "low": self.low, "high": self.high, "period_iters": self.period_iters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"base", "low", "high", "period_iters"} - set(state)
        if missing:
            raise ConfigError(f"CyclicInnerLR.load_state_dict: missing keys {sorted(missing)}")
        checked = CyclicInnerLR(
            state["base"], state["low"], state["high"], period_iters=state["period_iters"]
        )
        self.base, self.low, self.high = checked.base, checked.low, checked.high
        self.period_iters = checked.period_iters


class MetaStepConfig(StrictModel):
    """The meta step's knobs (the base step reuses :class:`reidflow.train.pretrain.LossConfig`)."""

    n_mtrain: int = Field(2, ge=1)
    second_order: bool = False
    scatter_weight: float = Field(1.0, ge=0)
    shuffle_weight: float = Field(1.0, ge=0)
    triplet_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(
        0.0, ge=0, description="CE in the meta-train and meta-test losses (the single-source recipe: 1)"
    )
    virtual_clamp: Literal["straight_through", "differentiable"] = Field(
        "straight_through",
        description="clamp of the virtual gates: values only (the authors' code) or with its gradient",
    )
    warmup_iters: int = Field(10, ge=0, description="base-only iterations before the first meta step")


def clamp_virtual(gates: Tensor, kind: str) -> Tensor:
    """Clamp virtual gates to [0, 1]; ``straight_through`` keeps ``∂out/∂gates = 1`` everywhere."""
    clamped = gates.clamp(0.0, 1.0)
    if kind == "differentiable":
        return clamped
    return gates + (clamped - gates).detach()


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(theta, gates)``: every trainable parameter except the BIN/MetaBIN gates, and the gates."""
    gates = list(gate_parameters(model).values())
    if not gates:
        raise ConfigError(
            f"MetaBIN: {type(model).__name__} has no gated norm layer; build the backbone with norm='metabin'"
        )
    gate_ids = {id(g) for g in gates}
    theta = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
    return theta, gates


def build_metabin_optimizers(
    model: nn.Module, theta: OptimizerConfig, rho_lr: float
) -> tuple[torch.optim.Optimizer, torch.optim.SGD]:
    """θ optimizer from ``theta`` (gates excluded, bias groups kept) and plain SGD on the gates."""
    if rho_lr <= 0:
        raise ConfigError(f"MetaBIN: rho_lr must be > 0, got {rho_lr}")
    _, gates = split_parameters(model)
    gate_ids = {id(g) for g in gates}
    named_theta = [(n, p) for n, p in model.named_parameters() if id(p) not in gate_ids]
    return build_optimizer(named_theta, theta), torch.optim.SGD(
        gates, lr=rho_lr, momentum=0.0, weight_decay=0.0
    )


def split_domains(domains: Tensor, n_mtrain: int, seed: int, iteration: int) -> Tensor:
    """Boolean mask of the meta-train samples: the first ``n_mtrain`` domains of a (seed, iteration) shuffle."""
    present = sorted({int(d) for d in domains.tolist()})
    if len(present) <= n_mtrain:
        raise ConfigError(
            f"MetaBIN: the meta batch holds {len(present)} domain(s) {present}; n_mtrain={n_mtrain} needs at "
            "least n_mtrain + 1 (the rest are meta-test)"
        )
    order = np.random.default_rng((seed, iteration)).permutation(len(present))
    chosen = torch.tensor([present[i] for i in order[:n_mtrain]], device=domains.device, dtype=domains.dtype)
    return torch.isin(domains, chosen)


class MetaBINMethod:
    """State: one re-ID model with metabin norms, θ and ρ optimizers/schedulers, the inner-step cycle."""

    def __init__(
        self,
        model: nn.Module,
        theta_optimizer: torch.optim.Optimizer,
        rho_optimizer: torch.optim.Optimizer,
        theta_scheduler: Any,
        rho_scheduler: Any,
        loss: LossConfig,
        num_classes: int,
        train_transform: nn.Module,
        meta_batches: MetaBatches,
        inner_lr: CyclicInnerLR,
        meta: MetaStepConfig | None = None,
        *,
        seed: int = 0,
        gate_log_every: int = 50,
    ) -> None:
        self.model = model
        self._check_optimizers(theta_optimizer, rho_optimizer)
        self.theta_optimizer = theta_optimizer
        self.rho_optimizer = rho_optimizer
        self.theta_scheduler = theta_scheduler
        self.rho_scheduler = rho_scheduler
        self.meta = meta or MetaStepConfig()
        self.seed = int(seed)  # seeds the per-iteration meta-train/meta-test domain split
        self.loss = SupervisedLoss(loss, num_classes)
        self.transform = train_transform
        self.meta_batches = meta_batches
        self.inner_lr = inner_lr
        self.gate_log_every = max(1, int(gate_log_every))

    def _check_optimizers(self, theta_opt: torch.optim.Optimizer, rho_opt: torch.optim.Optimizer) -> None:
        gate_ids = {id(g) for g in split_parameters(self.model)[1]}
        theta_ids = {id(p) for g in theta_opt.param_groups for p in g["params"]}
        rho_ids = {id(p) for g in rho_opt.param_groups for p in g["params"]}
        if theta_ids & gate_ids:
            raise ConfigError("MetaBIN: the 'theta' optimizer holds gate parameters (rho); exclude them")
        if rho_ids != gate_ids:
            raise ConfigError(
                f"MetaBIN: the 'rho' optimizer must hold exactly the {len(gate_ids)} gate parameters, "
                f"got {len(rho_ids)} parameters ({len(rho_ids & gate_ids)} of them gates)"
            )

    # -- the Method protocol
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"theta": self.theta_optimizer, "rho": self.rho_optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"theta": self.theta_scheduler, "rho": self.rho_scheduler}

    def step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        metrics = self.base_step(batch, ctx)
        if ctx.iteration >= self.meta.warmup_iters:
            metrics.update(self.meta_step(self.meta_batches(ctx.iteration), ctx))
        if ctx.iteration % self.gate_log_every == 0:
            metrics.update(gate_trajectory_metrics(ctx.unwrap("model")))
        return metrics

    # -- the two halves
    def base_step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        """CE + triplet on ``batch``; updates θ only (running statistics too), then clamps the gates."""
        self.transform.to(ctx.device)
        images = self.transform(batch["image"])
        labels = batch["pid"]
        with ctx.autocast():
            out = ctx.unwrap("model")(images, labels)
        terms, logits = self.loss(out, labels)
        theta, _ = split_parameters(ctx.unwrap("model"))
        ctx.backward_and_step(terms, "theta", params=theta, sync_grads=True)
        clamp_gates_(ctx.unwrap("model"))
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {**{k: v.detach() for k, v in terms.items()}, "acc": acc}

    def meta_step(self, meta_batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        """Meta-train → virtual gates ρ' → meta-test; updates ρ only; running statistics untouched."""
        missing = [k for k in ("image", "pid", "domain") if k not in meta_batch]
        if missing:
            raise ConfigError(
                f"MetaBIN: meta_batches({ctx.iteration}) lacks keys {missing}; expected image, pid, domain"
            )
        meta_batch = move_to_device(meta_batch, ctx.device)
        model = ctx.unwrap("model")
        named_gates = gate_parameters(model)
        names, gates = list(named_gates), list(named_gates.values())
        beta = self.inner_lr.value(ctx.iteration)
        mtrain = split_domains(meta_batch["domain"], self.meta.n_mtrain, self.seed, ctx.iteration)
        self.transform.to(ctx.device)
        images = self.transform(meta_batch["image"])
        pids, domains = meta_batch["pid"], meta_batch["domain"]
        cfg = self.meta
        second = twice_differentiable(model) if cfg.second_order else contextlib.nullcontext()
        with running_stats_held(model), second:
            with ctx.autocast():
                mtrain_out = model(images[mtrain], pids[mtrain])
            features = loss_dtype(mtrain_out["features"])
            mtrain_terms = {
                "scatter": cfg.scatter_weight * intra_domain_scatter_loss(features, domains[mtrain]),
                "shuffle": cfg.shuffle_weight
                * inter_domain_shuffle_loss(features, pids[mtrain], domains[mtrain]),
                "triplet": cfg.triplet_weight * self.loss.triplet(features, pids[mtrain]),
            }
            if cfg.ce_weight > 0:
                mtrain_terms["ce"] = cfg.ce_weight * self.loss.ce(
                    loss_dtype(mtrain_out["logits"]), pids[mtrain]
                )
            mtrain_loss = sum(mtrain_terms.values())
            assert isinstance(mtrain_loss, Tensor)
            inner = torch.autograd.grad(mtrain_loss, gates, create_graph=cfg.second_order, allow_unused=True)
            inner = [torch.zeros_like(g) if d is None else d for g, d in zip(gates, inner, strict=True)]
            if not cfg.second_order:
                inner = [d.detach() for d in inner]
                if ctx.world_size > 1:
                    inner = [ctx.all_reduce_mean(d) for d in inner]
            virtual = {
                n: clamp_virtual(g - beta * d, cfg.virtual_clamp)
                for n, g, d in zip(names, gates, inner, strict=True)
            }
            with ctx.autocast():
                out = functional_call(model, virtual, (images[~mtrain], pids[~mtrain]))
            mtest_terms = {"mtest_triplet": self.loss.triplet(loss_dtype(out["features"]), pids[~mtrain])}
            if cfg.ce_weight > 0:
                mtest_terms["mtest_ce"] = cfg.ce_weight * self.loss.ce(
                    loss_dtype(out["logits"]), pids[~mtrain]
                )
            ctx.backward_and_step(mtest_terms, "rho", params=gates, sync_grads=True)
        clamp_gates_(model)
        logged = {f"mtrain_{k}": v.detach() for k, v in mtrain_terms.items()}
        return {**logged, **{k: v.detach() for k, v in mtest_terms.items()}, "beta": beta}
