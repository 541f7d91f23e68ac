"""Re-ID losses: label-smoothed cross-entropy and batch-hard triplet variants."""

from reidflow.losses.ce import CrossEntropyLabelSmooth
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
    "euclidean_dist",
    "hard_example_mining",
]
