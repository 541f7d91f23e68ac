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
from reidflow.losses import CrossEntropyLabelSmooth, SoftmaxTripletLoss, TripletLoss
from reidflow.train.engine import StepContext


class LossConfig(StrictModel):
    ce_weight: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    triplet: Literal["hard", "soft_margin", "softmax"] = "hard"
    triplet_weight: float = Field(1.0, ge=0)
    margin: float = Field(0.3, ge=0)


def build_triplet(cfg: LossConfig) -> nn.Module:
    if cfg.triplet == "softmax":
        return SoftmaxTripletLoss(margin=cfg.margin)
    return TripletLoss(margin=cfg.margin, soft_margin=cfg.triplet == "soft_margin")


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
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_cfg = loss
        self.ce = CrossEntropyLabelSmooth(num_classes, epsilon=loss.label_smoothing)
        self.triplet = build_triplet(loss)
        self.transform = train_transform
        self.target = target

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"model": self.scheduler}

    def step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        self.transform.to(ctx.device)
        images = self.transform(batch["image"])
        labels = batch["pid"]
        model = ctx.module("model")
        with ctx.autocast():
            out = model(images, labels)
        logits, features = out["logits"].float(), out["features"].float()
        terms: dict[str, Tensor] = {}
        if self.loss_cfg.ce_weight > 0:
            terms["ce"] = self.loss_cfg.ce_weight * self.ce(logits, labels)
        if self.loss_cfg.triplet_weight > 0:
            terms["triplet"] = self.loss_cfg.triplet_weight * self.triplet(features, labels)
        ctx.backward_and_step(terms, "model")
        if self.target is not None:
            self._adapt_bn(ctx)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {**{k: v.detach() for k, v in terms.items()}, "acc": acc}

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
