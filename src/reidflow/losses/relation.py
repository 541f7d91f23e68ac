"""SDA's relation (structure) consistency loss (Ge et al. 2020; docs/methods/sda.md).

``e1 = E_t(G(x_s))`` (the target-domain encoder on translated source images) and ``e2 = E_s(x_s)``
(the source encoder on the raw images), un-normalized, Euclidean distances. For every anchor the
hardest positive and the hardest negative are mined on ``e1`` with the source identity labels; the
loss is a soft triplet: the cross-entropy between ``softmax([d_ap, d_an])`` of ``e2`` at the same
indices (the reference, detached) and ``log_softmax([d_ap, d_an])`` of ``e1``. It is smallest, with
zero gradient, when the translated images keep every relation the source encoder sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidflow.errors import ConfigError
from reidflow.losses.triplet import euclidean_dist


def relation_consistency_loss(e1: torch.Tensor, e2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft triplet of ``e1`` towards the pair relations of ``e2`` (N×D each; ``labels`` N)."""
    if e1.dim() != 2 or e1.shape[0] != e2.shape[0] or e2.dim() != 2:
        raise ConfigError(
            f"relation loss: expected two N×D feature batches, got {tuple(e1.shape)} and {tuple(e2.shape)}"
        )
    if labels.shape != (e1.shape[0],):
        raise ConfigError(
            f"relation loss: labels must have shape ({e1.shape[0]},), got {tuple(labels.shape)}"
        )
    dist1 = euclidean_dist(e1, e1)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    valid = same.any(dim=1) & (~same).any(dim=1)
    if not bool(valid.any()):
        raise ConfigError(
            f"relation loss: the batch has no negative pair (all {labels.numel()} images share one identity); "
            "use an identity-balanced P×K source batch with P >= 2"
        )
    with torch.no_grad():  # the mining picks indices; gradients flow through the picked distances
        pos = dist1.masked_fill(~same, float("-inf")).argmax(dim=1)
        neg = dist1.masked_fill(same, float("inf")).argmin(dim=1)
    rows = torch.arange(e1.shape[0], device=e1.device)[valid]
    pos, neg = pos[valid], neg[valid]
    d1 = torch.stack([dist1[rows, pos], dist1[rows, neg]], dim=1)
    with torch.no_grad():
        dist2 = euclidean_dist(e2.detach(), e2.detach())
        reference = F.softmax(torch.stack([dist2[rows, pos], dist2[rows, neg]], dim=1), dim=1)
    return -(reference * F.log_softmax(d1, dim=1)).sum(dim=1).mean()
