"""Re-ID heads: pooling (GeM / avg / max), BNNeck, and identity classifiers.

Classifiers share one interface, ``forward(features, labels=None) -> logits``, and keep their
class weights in ``.weight`` (num_classes × in_features) so a method can re-initialize rows (e.g.
from cluster centroids). ArcFace and CosFace add their margin to the target logit only when labels
are given; without labels (evaluation, or unlabeled batches forwarded to adapt BN statistics) they
return the scaled cosines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reidflow.errors import ConfigError


class GeM(nn.Module):
    """Generalized-mean pooling ``(mean(clamp(x, eps)^p))^(1/p)`` with learnable ``p`` (N×C×h×w → N×C)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ConfigError(f"GeM: p must be > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


POOLS = ("gem", "avg", "max")


def build_pool(kind: str, gem_p: float = 3.0) -> nn.Module:
    """``"gem"`` | ``"avg"`` | ``"max"``."""
    if kind == "gem":
        return GeM(p=gem_p)
    if kind == "avg":
        return GlobalAvgPool()
    if kind == "max":
        return GlobalMaxPool()
    raise ConfigError(f"unknown pool {kind!r}; known pools: {', '.join(POOLS)}")


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d after pooling whose bias is fixed at 0 (Luo et al., "bag of tricks")."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.bias.requires_grad_(False)


class LinearClassifier(nn.Module):
    """Bias-free linear classifier, weights ~ N(0, 0.001)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.001)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(features, self.weight)


class _CosineClassifier(nn.Module):
    """Shared part of ArcFace/CosFace: cosines between L2-normalized features and class weights."""

    def __init__(self, in_features: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        if scale <= 0:
            raise ConfigError(f"{type(self).__name__}: scale must be > 0, got {scale}")
        if margin < 0:
            raise ConfigError(f"{type(self).__name__}: margin must be >= 0, got {margin}")
        self.scale = float(scale)
        self.margin = float(margin)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosines(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosines(features)
        if labels is None:
            return self.scale * cos
        _check_labels(labels, cos.shape[0], cos.shape[1], type(self).__name__)
        one_hot = F.one_hot(labels.long(), cos.shape[1]).to(cos.dtype)
        cos_target = (cos * one_hot).sum(dim=1, keepdim=True)
        with_margin = cos + one_hot * (self.target_logit(cos_target) - cos_target)
        return self.scale * with_margin


class ArcFace(_CosineClassifier):
    """Additive angular margin: target logit ``s·cos(θ + m)``.

    Where ``θ + m`` would pass π (cos θ < cos(π - m)) the usual monotonic fallback
    ``cos θ - m·sin(m)`` is used so the target logit keeps decreasing with θ.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(in_features, num_classes, scale, margin)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        sin_target = (1.0 - cos_target.pow(2)).clamp(min=1e-12).sqrt()  # finite grad at |cos| = 1
        cos_with_margin = cos_target * math.cos(self.margin) - sin_target * math.sin(self.margin)
        threshold = math.cos(math.pi - self.margin)
        fallback = cos_target - self.margin * math.sin(self.margin)
        return torch.where(cos_target > threshold, cos_with_margin, fallback)


class CosFace(_CosineClassifier):
    """Additive cosine margin: target logit ``s·(cos θ - m)``."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.4) -> None:
        super().__init__(in_features, num_classes, scale, margin)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin


CLASSIFIERS = ("linear", "arcface", "cosface")


def build_classifier(
    kind: str, in_features: int, num_classes: int, scale: float | None = None, margin: float | None = None
) -> nn.Module:
    """``"linear"`` | ``"arcface"`` | ``"cosface"``; ``scale``/``margin`` None = the kind's default."""
    if num_classes <= 0:
        raise ConfigError(f"classifier: num_classes must be > 0, got {num_classes}")
    if kind == "linear":
        if scale is not None or margin is not None:
            raise ConfigError("classifier 'linear' takes no scale/margin")
        return LinearClassifier(in_features, num_classes)
    if kind in ("arcface", "cosface"):
        cls = ArcFace if kind == "arcface" else CosFace
        kwargs = {k: v for k, v in (("scale", scale), ("margin", margin)) if v is not None}
        return cls(in_features, num_classes, **kwargs)
    raise ConfigError(f"unknown classifier {kind!r}; known classifiers: {', '.join(CLASSIFIERS)}")


def _check_labels(labels: torch.Tensor, batch: int, num_classes: int, who: str) -> None:
    if labels.shape != (batch,):
        raise ConfigError(f"{who}: labels must have shape ({batch},), got {tuple(labels.shape)}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(
            f"{who}: labels must be in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
        )
