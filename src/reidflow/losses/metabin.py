"""MetaBIN's meta-train losses (Choi et al. 2021): intra-domain scatter and inter-domain shuffle.

Both deliberately push the gates toward *over*-style-normalization during meta-train, so that the
meta-test step (which sees unseen domains through the virtually updated gates) learns to undo it:

* :func:`intra_domain_scatter_loss` spreads each domain's samples away from their centre
  (minimizing the mean cosine to the centre);
* :func:`inter_domain_shuffle_loss` is a soft-margin batch-hard triplet in which samples of *other*
  domains count as positives (whatever their identity) and same-domain samples of other identities
  are negatives, i.e. it rewards features that forget the domain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidflow.errors import ConfigError
from reidflow.losses.triplet import euclidean_dist, hard_example_mining


def _check_inputs(who: str, features: torch.Tensor, **labels: torch.Tensor) -> None:
    if features.dim() != 2 or features.shape[0] == 0:
        raise ConfigError(f"{who}: features must be a non-empty N×D tensor, got {tuple(features.shape)}")
    n = features.shape[0]
    for name, values in labels.items():
        if values.shape != (n,):
            raise ConfigError(
                f"{who}: {name} must have shape ({n},) like the features, got {tuple(values.shape)}"
            )


def intra_domain_scatter_loss(features: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """Mean over domains d of ``mean_i cos(μ_d, f_i)``, with ``μ_d`` the mean of d's L2-normalized features."""
    _check_inputs("intra_domain_scatter_loss", features, domains=domains)
    normalized = F.normalize(features, dim=1)
    per_domain = []
    for domain in torch.unique(domains):
        members = normalized[domains == domain]
        centre = members.mean(dim=0, keepdim=True)
        per_domain.append(F.cosine_similarity(members, centre, dim=1).mean())
    return torch.stack(per_domain).mean()


def inter_domain_shuffle_loss(
    features: torch.Tensor, pids: torch.Tensor, domains: torch.Tensor
) -> torch.Tensor:
    """``mean softplus(d_ap - d_an)`` with positives = self + other domains, negatives = same domain, other id.

    Raises :class:`ConfigError` when an anchor has no negative (its domain holds one identity only):
    the loss would silently ignore that domain, which a domain-balanced P×K batch never produces.
    """
    _check_inputs("inter_domain_shuffle_loss", features, pids=pids, domains=domains)
    n = features.shape[0]
    same_domain = domains.unsqueeze(0) == domains.unsqueeze(1)
    same_pid = pids.unsqueeze(0) == pids.unsqueeze(1)
    itself = torch.eye(n, dtype=torch.bool, device=features.device)
    positives = itself | ~same_domain
    negatives = same_domain & ~same_pid
    if not bool(negatives.any(dim=1).all()):
        lonely = sorted({int(d) for d in domains[~negatives.any(dim=1)].tolist()})
        raise ConfigError(
            f"inter_domain_shuffle_loss: domain(s) {lonely} hold a single identity, so their anchors have no "
            "negative; expected >= 2 identities per domain (a domain-balanced P×K batch)"
        )
    d_ap, d_an, _ = hard_example_mining(euclidean_dist(features, features), positives, negatives)
    return F.softplus(d_ap - d_an).mean()
