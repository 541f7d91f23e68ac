"""Mutual mean-teaching losses (Ge et al., ICLR 2020): soft cross-entropy and soft triplet, each
against the *other* net's mean-net outputs (which are treated as constants)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidflow.errors import ConfigError
from reidflow.losses.triplet import euclidean_dist


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """``mean_i Σ_k -softmax(target_logits)_ik · log_softmax(logits)_ik`` (targets detached)."""
    if logits.shape != target_logits.shape or logits.dim() != 2:
        raise ConfigError(
            f"soft_cross_entropy: logits {tuple(logits.shape)} and target logits "
            f"{tuple(target_logits.shape)} must be the same N×K"
        )
    target = F.softmax(target_logits.detach().float(), dim=1)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def _hardest(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor the column of its hardest positive and hardest negative, and which anchors have both."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    pos = dist.detach().masked_fill(~same, float("-inf")).argmax(dim=1)
    neg = dist.detach().masked_fill(same, float("inf")).argmin(dim=1)
    valid = (~same).any(dim=1)
    return pos, neg, valid


def soft_triplet_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """MMT's soft triplet loss on batch-hard triplets mined on ``features``.

    With ``p = softmax([d_ap, d_an])`` of the net: without ``reference`` the loss is ``-log p_an``
    (= softplus(d_ap - d_an)); with ``reference`` (the other mean net's features of the same batch),
    the target is the reference's ``softmax([d'_ap, d'_an])`` at the same triplets (a constant) and
    the loss is the cross-entropy ``-Σ target · log p``. A batch of a single label (an epoch whose
    clustering found one cluster) has no triplet: the loss is 0, with zero gradient, rather than an
    error hours into a run; the cluster metrics of the epoch show why.
    """
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ConfigError(
            f"soft_triplet_loss: expected N×D features and N labels, got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    f = F.normalize(features.float(), dim=1) if normalize else features.float()
    dist = euclidean_dist(f, f)
    pos, neg, valid = _hardest(dist, labels)
    if not bool(valid.any()):
        return features.float().sum() * 0.0
    rows = torch.arange(f.shape[0], device=f.device)
    log_p = F.log_softmax(torch.stack([dist[rows, pos], dist[rows, neg]], dim=1), dim=1)[valid]
    if reference is None:
        return -log_p[:, 1].mean()
    if reference.shape != features.shape:
        raise ConfigError(
            f"soft_triplet_loss: reference {tuple(reference.shape)} must match features {tuple(features.shape)}"
        )
    with torch.no_grad():
        r = F.normalize(reference.float(), dim=1) if normalize else reference.float()
        ref_dist = euclidean_dist(r, r)
        target = F.softmax(torch.stack([ref_dist[rows, pos], ref_dist[rows, neg]], dim=1), dim=1)[valid]
    return -(target * log_p).sum(dim=1).mean()
