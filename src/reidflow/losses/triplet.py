"""Batch-hard triplet losses on Euclidean distances.

For every anchor the hardest positive (same label, largest distance; the anchor itself counts, so
an anchor whose identity has one image in the batch gets d_ap = 0) and the hardest negative
(different label, smallest distance) are mined; anchors with no negative in the batch are left out.

* :class:`TripletLoss`: ``relu(d_ap - d_an + m)`` (margin ranking, Hermans et al. 2017), or with
  ``soft_margin=True`` ``softplus(d_ap - d_an)``.
* :class:`SoftmaxTripletLoss` (VisDA-2020 source-pretraining recipe, docs/methods/pretraining.md): the
  cross-entropy of picking the positive in a two-way softmax over negated distances,
  ``-log softmax([-d_ap, -d_an])[0]`` = ``log(1 + exp(d_ap - d_an))`` = ``softplus(d_ap - d_an)``
  at the recipe's margin 0. A margin ``m`` is added to ``d_ap`` (``softplus(d_ap + m - d_an)``). At
  ``m = 0`` it equals the soft-margin TripletLoss; it is kept as its own class because recipes name it.

:func:`hard_example_mining` takes arbitrary positive/negative masks so other losses (e.g. MetaBIN's
inter-domain shuffle loss) can reuse it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reidflow.errors import ConfigError

_MIN_SQUARED_DISTANCE = 1e-12


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """M×N Euclidean distances between rows of ``x`` (M×D) and ``y`` (N×D).

    Uses ``|x|² + |y|² - 2x·y`` clamped at 1e-12 before the square root, so identical rows give
    1e-6 (not NaN gradients from sqrt(0) or a negative rounding error).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ConfigError(
            f"euclidean_dist: expected M×D and N×D tensors, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    squared = x.pow(2).sum(dim=1, keepdim=True) + y.pow(2).sum(dim=1).unsqueeze(0) - 2.0 * (x @ y.t())
    return squared.clamp(min=_MIN_SQUARED_DISTANCE).sqrt()


def hard_example_mining(
    dist: torch.Tensor, positive_mask: torch.Tensor, negative_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor (row): max distance over positives and min over negatives.

    Returns ``(d_ap, d_an, valid)`` where ``valid`` marks anchors having at least one positive and
    one negative; values at invalid anchors are meaningless and must be masked out by the caller.
    """
    valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
    d_ap = dist.masked_fill(~positive_mask, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(~negative_mask, float("inf")).amin(dim=1)
    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    return torch.where(valid, d_ap, zero), torch.where(valid, d_an, zero), valid


def batch_hard_distances(
    features: torch.Tensor, labels: torch.Tensor, normalize: bool = False, who: str = "triplet loss"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest positive and negative distances of every anchor that has a negative in the batch."""
    if features.dim() != 2:
        raise ConfigError(f"{who}: features must be N×D, got {tuple(features.shape)}")
    if labels.shape != (features.shape[0],):
        raise ConfigError(f"{who}: labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
    if normalize:
        features = F.normalize(features, dim=1)
    dist = euclidean_dist(features, features)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    d_ap, d_an, valid = hard_example_mining(dist, same, ~same)
    if not bool(valid.any()):
        raise ConfigError(
            f"{who}: the batch has no negative pair (all {labels.numel()} samples share one identity); "
            "use an identity-balanced P×K sampler with P >= 2"
        )
    return d_ap[valid], d_an[valid]


class TripletLoss(nn.Module):
    """Batch-hard triplet loss: ``mean relu(d_ap - d_an + margin)`` or ``mean softplus(d_ap - d_an)``."""

    def __init__(self, margin: float = 0.3, soft_margin: bool = False, normalize: bool = False) -> None:
        super().__init__()
        if margin < 0:
            raise ConfigError(f"TripletLoss: margin must be >= 0, got {margin}")
        self.margin = margin
        self.soft_margin = soft_margin
        self.normalize = normalize

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d_ap, d_an = batch_hard_distances(features, labels, self.normalize, "TripletLoss")
        if self.soft_margin:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()


class SoftmaxTripletLoss(nn.Module):
    """Softmax-triplet: ``mean -log softmax([-(d_ap + m), -d_an])[0]`` over batch-hard triplets."""

    def __init__(self, margin: float = 0.0, normalize: bool = False) -> None:
        super().__init__()
        if margin < 0:
            raise ConfigError(f"SoftmaxTripletLoss: margin must be >= 0, got {margin}")
        self.margin = margin
        self.normalize = normalize

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d_ap, d_an = batch_hard_distances(features, labels, self.normalize, "SoftmaxTripletLoss")
        logits = torch.stack([-(d_ap + self.margin), -d_an], dim=1)
        return -F.log_softmax(logits, dim=1)[:, 0].mean()
