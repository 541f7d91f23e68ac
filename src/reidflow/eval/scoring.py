"""Score one query/gallery pair of feature sets under every requested variant.

Variants: ``plain`` distances; ``camera`` (d - λ·d_cam); ``rerank`` (k-reciprocal); ``camera+rerank``
(camera correction applied to q-g, q-q and g-g before re-ranking, as in the VisDA post-processing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reidflow.eval.ensemble import camera_corrected, sq_euclidean
from reidflow.eval.metrics import evaluate_rank
from reidflow.eval.rerank import k_reciprocal


@dataclass(frozen=True)
class RerankParams:
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


def score_variants(
    q: np.ndarray,
    g: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    *,
    max_rank: int,
    rerank: RerankParams | None,
    cam: tuple[np.ndarray, np.ndarray] | None = None,
    camera_lambda: float = 0.1,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Metrics per variant and the q×g distance matrix each variant ranked with."""
    max_rank = min(max_rank, len(g))
    d_qg = sq_euclidean(q, g)
    dists = {"plain": d_qg}
    need_square = rerank is not None
    d_qq = sq_euclidean(q, q) if need_square else None
    d_gg = sq_euclidean(g, g) if need_square else None
    if cam is not None:
        cq, cg = cam
        dists["camera"] = camera_corrected(d_qg, sq_euclidean(cq, cg), camera_lambda)
    if rerank is not None:
        dists["rerank"] = k_reciprocal(
            d_qg, d_qq, d_gg, k1=rerank.k1, k2=rerank.k2, lambda_value=rerank.lambda_value
        )
        if cam is not None:
            cq, cg = cam
            # d - λ·d_cam can be negative; re-ranking normalizes columns by their maximum, so all three
            # matrices are shifted by the same constant 4λ (d_cam <= 4 on unit vectors), which keeps
            # every ordering and makes each column's maximum positive.
            shift = 4.0 * camera_lambda
            dists["camera+rerank"] = k_reciprocal(
                dists["camera"] + shift,
                camera_corrected(d_qq, sq_euclidean(cq, cq), camera_lambda) + shift,
                camera_corrected(d_gg, sq_euclidean(cg, cg), camera_lambda) + shift,
                k1=rerank.k1,
                k2=rerank.k2,
                lambda_value=rerank.lambda_value,
            )
    results = {
        name: evaluate_rank(d, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
        for name, d in dists.items()
    }
    return results, dists


def headline(result: dict[str, Any]) -> dict[str, float]:
    """mAP, rank-1/5/10 and mINP of one evaluation, as plain floats (fractions)."""
    cmc = np.asarray(result["cmc"])
    pick = {f"rank{k}": float(cmc[min(k, len(cmc)) - 1]) for k in (1, 5, 10)}
    return {
        "mAP": float(result["mAP"]),
        **pick,
        "mINP": float(result["mINP"]),
        "valid_queries": int(result["num_valid_queries"]),
    }
