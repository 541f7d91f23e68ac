"""Evaluation: ranking metrics, k-reciprocal re-ranking and evaluation protocols."""

from reidflow.eval.metrics import evaluate_rank, iter_distance_blocks
from reidflow.eval.protocols import (
    Split,
    average_over_targets,
    evaluate_splits,
    multi_split,
    random_id_split,
    standard,
    summarize,
)
from reidflow.eval.rerank import k_reciprocal, k_reciprocal_from_features, squared_euclidean

__all__ = [
    "Split",
    "average_over_targets",
    "evaluate_rank",
    "evaluate_splits",
    "iter_distance_blocks",
    "k_reciprocal",
    "k_reciprocal_from_features",
    "multi_split",
    "random_id_split",
    "squared_euclidean",
    "standard",
    "summarize",
]
