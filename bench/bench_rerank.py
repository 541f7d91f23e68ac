"""k-reciprocal re-ranking: sparse, chunked ``k_reciprocal`` vs the dense reference at N = q + g.

Prints one JSON object: time and peak extra memory (tracemalloc) of both at N = 5,000, their
ratios and the largest difference. ``--quick``: N = 1,500. ``--full`` adds N = 50,000 from
128-d clustered features (ours only, ``k_reciprocal_from_features``) with time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource

import numpy as np
from _measure import measure

from reidflow.eval.reference import k_reciprocal_reference
from reidflow.eval.rerank import k_reciprocal, k_reciprocal_from_features, squared_euclidean


def clustered_features(num: int, dim: int = 128, num_ids: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    num_ids = num_ids or max(2, num // 7)
    centers = rng.normal(size=(num_ids, dim)).astype(np.float32)
    labels = rng.integers(0, num_ids, num)
    feats = centers[labels] + 0.6 * rng.normal(size=(num, dim)).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="N = 1,500 instead of 5,000")
    mode.add_argument("--full", action="store_true", help="also run N = 50,000 (ours only)")
    args = parser.parse_args()
    num_all = 1500 if args.quick else 5000
    num_q = num_all // 5
    feats = clustered_features(num_all)
    q, g = feats[:num_q], feats[num_q:]
    q_g, q_q, g_g = squared_euclidean(q, g), squared_euclidean(q, q), squared_euclidean(g, g)

    k_reciprocal(q_g[:50, :200], q_q[:50, :50], g_g[:200, :200], k1=5)  # warm-up
    ours, ours_s, ours_mb = measure(k_reciprocal, q_g, q_q, g_g)
    ref, ref_s, ref_mb = measure(k_reciprocal_reference, q_g, q_q, g_g)
    report = {
        "benchmark": "k_reciprocal",
        "size": {"queries": num_q, "gallery": num_all - num_q, "k1": 20, "k2": 6, "lambda": 0.3},
        "ours_seconds": round(ours_s, 3),
        "reference_seconds": round(ref_s, 3),
        "speedup": round(ref_s / ours_s, 2),
        "ours_peak_extra_mb": round(ours_mb, 1),
        "reference_peak_extra_mb": round(ref_mb, 1),
        "memory_ratio": round(ours_mb / ref_mb, 3),
        "max_abs_diff": float(np.abs(ours - ref).max()),
    }
    if args.full:
        big_q = 6000
        big = clustered_features(50_000, seed=1)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out, big_s, big_mb = measure(k_reciprocal_from_features, big[:big_q], big[big_q:])
        report["n50000"] = {
            "queries": big_q,
            "gallery": 50_000 - big_q,
            "feature_dim": 128,
            "seconds": round(big_s, 1),
            "peak_extra_mb": round(big_mb, 1),
            "output_mb": round(out.nbytes / 2**20, 1),
            "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "process_rss_before_mb": round(rss_before, 1),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
