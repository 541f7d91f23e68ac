"""Supervised (source) pretraining: CE with label smoothing + batch-hard triplet on a re-ID model.

The same method trains the camera model of the evaluation stage (labels = camera ids). Optionally
it forwards unlabelled target batches without a loss after each update, so the BN running
statistics adapt to the target (the VisDA recipe). Target batches are a pure function of
(seed, iteration), so a resumed run draws exactly the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from reidflow.config import StrictModel
from reidflow.errors import ConfigError
from reidflow.losses import CrossEntropyLabelSmooth, SoftmaxTripletLoss, TripletLoss, dual_causality_loss
from reidflow.models.norms import clamp_gates_
from reidflow.train.engine import StepContext
from reidflow.train.gate_log import gate_trajectory_metrics


class LossConfig(StrictModel):
    ce_weight: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    triplet: Literal["hard", "soft_margin", "softmax"] = "hard"
    triplet_weight: float = Field(1.0, ge=0)
    margin: float = Field(0.3, ge=0)
    snr_weight: float = Field(0.05, ge=0, description="dual causality loss; models with model.snr_stages")


def build_triplet(cfg: LossConfig) -> nn.Module:
    if cfg.triplet == "softmax":
        return SoftmaxTripletLoss(margin=cfg.margin)
    return TripletLoss(margin=cfg.margin, soft_margin=cfg.triplet == "soft_margin")


def loss_dtype(t: Tensor) -> Tensor:
    """Losses in float32 under AMP; double stays double (gradient checks)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class SupervisedLoss:
    """CE (label smoothing) + triplet on pre-BNNeck features [+ SNR's dual causality loss].

    Called on a training-mode model output; returns the weighted terms by name and the logits.
    """

    def __init__(self, cfg: LossConfig, num_classes: int) -> None:
        self.cfg = cfg
        self.ce = CrossEntropyLabelSmooth(num_classes, epsilon=cfg.label_smoothing)
        self.triplet = build_triplet(cfg)

    def __call__(self, out: dict[str, Any], labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        logits, features = loss_dtype(out["logits"]), loss_dtype(out["features"])
        terms: dict[str, Tensor] = {}
        if self.cfg.ce_weight > 0:
            terms["ce"] = self.cfg.ce_weight * self.ce(logits, labels)
        if self.cfg.triplet_weight > 0:
            terms["triplet"] = self.cfg.triplet_weight * self.triplet(features, labels)
        if out.get("snr") and self.cfg.snr_weight > 0:
            causality = [
                dual_causality_loss(*(loss_dtype(t) for t in triple), labels) for triple in out["snr"]
            ]
            terms["snr"] = self.cfg.snr_weight * torch.stack(causality).sum()
        if not terms:
            raise ConfigError("loss: ce_weight and triplet_weight are both 0; nothing to train")
        return terms, logits


class TargetBatches:
    """Deterministic unlabelled batches: batch ``t`` is drawn from ``default_rng((seed, t))``."""

    def __init__(self, load: Callable[[int], dict[str, Any]], size: int, batch_size: int, seed: int) -> None:
        self.load = load
        self.size = size
        self.batch_size = min(batch_size, size)
        self.seed = seed

    def batch(self, iteration: int, device: torch.device) -> Tensor:
        rows = np.random.default_rng((self.seed, iteration)).choice(self.size, self.batch_size, replace=False)
        return torch.stack([self.load(int(i))["image"] for i in rows]).to(device)


class PretrainMethod:
    """State: one model, its optimizer and schedule, the batch augmentation. See the module doc."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loss: LossConfig,
        num_classes: int,
        train_transform: nn.Module,
        target: TargetBatches | None = None,
        *,
        gate_optimizer: torch.optim.Optimizer | None = None,
        gate_scheduler: Any = None,
        gate_log_every: int = 50,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        if (gate_optimizer is None) != (gate_scheduler is None):
            raise ConfigError("PretrainMethod: gate_optimizer and gate_scheduler come together")
        self.gate_optimizer = gate_optimizer
        self.gate_scheduler = gate_scheduler
        self.gate_log_every = max(1, int(gate_log_every))
        self.loss = SupervisedLoss(loss, num_classes)
        self.transform = train_transform
        self.target = target

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        gates = {"gates": self.gate_optimizer} if self.gate_optimizer is not None else {}
        return {"model": self.optimizer, **gates}

    def schedulers(self) -> dict[str, Any]:
        gates = {"gates": self.gate_scheduler} if self.gate_scheduler is not None else {}
        return {"model": self.scheduler, **gates}

    def step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        self.transform.to(ctx.device)
        images = self.transform(batch["image"])
        labels = batch["pid"]
        model = ctx.module("model")
        with ctx.autocast():
            out = model(images, labels)
        terms, logits = self.loss(out, labels)
        ctx.backward_and_step(terms, ("model", "gates") if self.gate_optimizer is not None else "model")
        clamp_gates_(ctx.unwrap("model"))  # BIN gates stay in [0, 1]
        if self.target is not None:
            self._adapt_bn(ctx)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        metrics = {**{k: v.detach() for k, v in terms.items()}, "acc": acc}
        if ctx.iteration % self.gate_log_every == 0:
            metrics.update(gate_trajectory_metrics(ctx.unwrap("model")))
        return metrics

    @torch.no_grad()
    def _adapt_bn(self, ctx: StepContext) -> None:
        """Forward one unlabelled target batch in train mode: BN running stats see the target."""
        assert self.target is not None
        images = self.target.batch(ctx.iteration, ctx.device)
        norm = self.transform.normalize if hasattr(self.transform, "normalize") else (lambda x: x)
        from reidflow.data.transforms import to_float_batch

        x = norm(to_float_batch(images, *self._size()))
        with ctx.autocast():
            ctx.unwrap("model")(x)

    def _size(self) -> tuple[int, int]:
        cfg = self.transform.cfg
        return cfg.height, cfg.width
