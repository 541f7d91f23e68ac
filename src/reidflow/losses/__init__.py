"""Re-ID losses: label-smoothed cross-entropy, batch-hard triplet variants, MetaBIN's meta-train losses."""

from reidflow.losses.ce import CrossEntropyLabelSmooth
from reidflow.losses.metabin import inter_domain_shuffle_loss, intra_domain_scatter_loss
from reidflow.losses.snr import dual_causality_loss
from reidflow.losses.triplet import (
    SoftmaxTripletLoss,
    TripletLoss,
    batch_hard_distances,
    euclidean_dist,
    hard_example_mining,
)

__all__ = [
    "CrossEntropyLabelSmooth",
    "SoftmaxTripletLoss",
    "TripletLoss",
    "batch_hard_distances",
    "dual_causality_loss",
    "euclidean_dist",
    "hard_example_mining",
    "inter_domain_shuffle_loss",
    "intra_domain_scatter_loss",
]
