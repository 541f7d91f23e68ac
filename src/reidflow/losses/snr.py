"""SNR's dual causality loss on pooled features of one SNR module.

For every anchor, the hardest positive (same label, another sample, largest distance) and the
hardest negative (other label, smallest distance) are mined on the restituted features f̃⁺. Then
the restituted features f̃⁺ must be more discriminative than f̃ and the contaminated f̃⁻ less::

    L⁺ = softplus(d(f̃⁺_a, f̃⁺_p) - d(f̃_a, f̃_p)) + softplus(d(f̃_a, f̃_n) - d(f̃⁺_a, f̃⁺_n))
    L⁻ = softplus(d(f̃_a, f̃_p) - d(f̃⁻_a, f̃⁻_p)) + softplus(d(f̃⁻_a, f̃⁻_n) - d(f̃_a, f̃_n))

averaged over the anchors that have both a positive and a negative; the loss is ``L⁺ + L⁻``.
Sum it over the inserted modules and give it a small weight (0.01-0.1, docs/methods/snr.md).

Why mine on f̃⁺ and not on f̃: with global average pooling, f̃ = GAP(IN(F)) is the IN bias β for
every sample, so the f̃ distances are ~0 and mining on them would pick ties (the first positive /
negative of each anchor). Mining on f̃⁺ picks the pairs the restitution currently gets most wrong;
the f̃ distances stay the reference the loss compares against. The loss then acts as a soft-margin
triplet pulling f̃⁺ positives together and negatives apart, and the opposite on f̃⁻.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidflow.errors import ConfigError
from reidflow.losses.triplet import euclidean_dist

_MIN_SQUARED_DISTANCE = 1e-12


def dual_causality_loss(
    normalized: torch.Tensor, restituted: torch.Tensor, contaminated: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``L⁺ + L⁻`` (mean over anchors) for N×D pooled ``normalized``/``restituted``/``contaminated``."""
    _check_inputs(normalized, restituted, contaminated, labels)
    anchors, positives, negatives = _mine_on(restituted, labels)
    d_pos = _pair_distances(normalized, anchors, positives)
    d_neg = _pair_distances(normalized, anchors, negatives)
    d_pos_plus = _pair_distances(restituted, anchors, positives)
    d_neg_plus = _pair_distances(restituted, anchors, negatives)
    d_pos_minus = _pair_distances(contaminated, anchors, positives)
    d_neg_minus = _pair_distances(contaminated, anchors, negatives)
    enhanced = F.softplus(d_pos_plus - d_pos) + F.softplus(d_neg - d_neg_plus)
    weakened = F.softplus(d_pos - d_pos_minus) + F.softplus(d_neg_minus - d_neg)
    return (enhanced + weakened).mean()


def _check_inputs(
    normalized: torch.Tensor, restituted: torch.Tensor, contaminated: torch.Tensor, labels: torch.Tensor
) -> None:
    if normalized.dim() != 2:
        raise ConfigError(
            f"dual_causality_loss: normalized features must be N×D, got {tuple(normalized.shape)}"
        )
    for name, tensor in (("restituted", restituted), ("contaminated", contaminated)):
        if tensor.shape != normalized.shape:
            raise ConfigError(
                f"dual_causality_loss: {name} features must have the shape of the normalized ones "
                f"{tuple(normalized.shape)}, got {tuple(tensor.shape)}"
            )
    if labels.shape != (normalized.shape[0],):
        raise ConfigError(
            f"dual_causality_loss: labels must have shape ({normalized.shape[0]},), got {tuple(labels.shape)}"
        )


def _mine_on(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (anchor, hardest positive, hardest negative) of every anchor that has both."""
    with torch.no_grad():
        dist = euclidean_dist(features.detach(), features.detach())
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        negative = ~same
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not bool(valid.any()):
            raise ConfigError(
                f"dual_causality_loss: no anchor of the batch ({labels.numel()} samples) has both a positive "
                "(another sample with its label) and a negative; use an identity-balanced P×K sampler "
                "with P >= 2 and K >= 2"
            )
        hardest_positive = dist.masked_fill(~positive, float("-inf")).argmax(dim=1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).argmin(dim=1)
        anchors = valid.nonzero(as_tuple=True)[0]
    return anchors, hardest_positive[anchors], hardest_negative[anchors]


def _pair_distances(features: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between rows ``first[i]`` and ``second[i]`` (clamped: finite gradient at 0)."""
    squared = (features[first] - features[second]).pow(2).sum(dim=1)
    return squared.clamp(min=_MIN_SQUARED_DISTANCE).sqrt()
