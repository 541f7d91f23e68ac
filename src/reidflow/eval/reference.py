"""Slow, obviously-correct reference implementations, written from the definitions.

Used only by tests and benchmarks to check :mod:`reidflow.eval.metrics` and
:mod:`reidflow.eval.rerank`. Every function here loops over queries in Python and holds dense
matrices: clarity over speed, on purpose. Do not call them from pipeline code.
"""

from __future__ import annotations

import math

import numpy as np

from reidflow.eval.metrics import single_shot_uniforms


def _query_ranking(
    dist_row: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray, q_pid: int, q_camid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gallery order for one query (stable argsort) with junk removed; returns (order, is_match)."""
    order = np.argsort(dist_row, kind="stable")
    same_pid = g_pids[order] == q_pid
    junk = same_pid & (g_camids[order] == q_camid)
    keep = ~junk
    return order[keep], same_pid[keep]


def evaluate_rank_reference(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, topk_ap: int | None = None
) -> dict:
    """Per-query loop: CMC, mAP, mINP (and top-k AP) under the standard protocol."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    cmc_sum = np.zeros(max_rank)
    aps, inps, topk_aps = [], [], []
    skipped = 0
    for qi in range(distmat.shape[0]):
        _, is_match = _query_ranking(distmat[qi], g_pids, g_camids, int(q_pids[qi]), int(q_camids[qi]))
        num_matches = int(is_match.sum())
        if num_matches == 0:
            skipped += 1
            continue
        hits = np.cumsum(is_match)  # hits[k] = number of matches among the top k+1
        ranks = np.arange(1, len(is_match) + 1)
        first = int(np.argmax(is_match))  # 0-based position of the first match
        cmc = np.zeros(max_rank)
        cmc[first:] = 1.0
        cmc_sum += cmc
        precision_at_match = hits[is_match] / ranks[is_match]
        aps.append(precision_at_match.mean())
        last = int(np.nonzero(is_match)[0][-1])
        inps.append(num_matches / (last + 1))
        if topk_ap is not None:
            in_top = ranks[is_match] <= topk_ap
            topk_aps.append(precision_at_match[in_top].sum() / min(num_matches, topk_ap))
    valid = len(aps)
    result = {
        "cmc": cmc_sum / max(valid, 1),
        "mAP": float(np.mean(aps)) if aps else float("nan"),
        "mINP": float(np.mean(inps)) if inps else float("nan"),
        "num_valid_queries": valid,
        "num_skipped_queries": skipped,
    }
    if topk_ap is not None:
        result["mAP_at_k"] = float(np.mean(topk_aps)) if topk_aps else float("nan")
    return result


def single_gallery_shot_cmc_reference(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, num_repeats: int = 10, seed: int = 0
) -> np.ndarray:
    """CUHK03 single-gallery-shot CMC with the same draws as the fast version.

    For each repeat, identity ``p`` (the ``k``-th smallest gallery pid) is represented by
    ``eligible_p[floor(u[k] * len(eligible_p))]``, where ``eligible_p`` lists its gallery indices in
    ascending order (for the query's own identity: only those not in the query's camera).
    """
    distmat = np.asarray(distmat)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    unique_pids = np.unique(g_pids)
    cmc_sum = np.zeros(max_rank)
    valid = 0
    for qi in range(distmat.shape[0]):
        q_pid, q_camid = int(q_pids[qi]), int(q_camids[qi])
        junk = (g_pids == q_pid) & (g_camids == q_camid)
        if not np.any((g_pids == q_pid) & ~junk):
            continue
        valid += 1
        uniforms = single_shot_uniforms(seed, qi, num_repeats, len(unique_pids))
        cmc = np.zeros(max_rank)
        for rep in range(num_repeats):
            chosen = []
            for k, pid in enumerate(unique_pids):
                eligible = np.nonzero((g_pids == pid) & ~junk)[0]
                if len(eligible) == 0:
                    continue
                pick = min(math.floor(uniforms[rep, k] * len(eligible)), len(eligible) - 1)
                chosen.append(eligible[pick])
            chosen = np.sort(np.array(chosen))  # ties keep gallery index order, as in the full ranking
            order = chosen[np.argsort(distmat[qi, chosen], kind="stable")]
            first = int(np.nonzero(g_pids[order] == q_pid)[0][0])
            cmc[first:] += 1.0
        cmc_sum += cmc / num_repeats
    return cmc_sum / max(valid, 1)


def tpr_at_fpr_reference(distmat, q_pids, g_pids, q_camids, g_camids, fprs) -> dict[float, float]:
    """Pool every (query, gallery) pair except same-id-same-camera ones; positive = same id.

    A pair is accepted when its distance is below the threshold; for each target FPR the threshold
    is the largest one that accepts at most ``floor(fpr * #negatives)`` negative pairs.
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    same = np.asarray(q_pids)[:, None] == np.asarray(g_pids)[None, :]
    junk = same & (np.asarray(q_camids)[:, None] == np.asarray(g_camids)[None, :])
    positives = distmat[same & ~junk]
    negatives = np.sort(distmat[~same])
    out = {}
    for fpr in fprs:
        allowed = math.floor(round(fpr * len(negatives), 9))
        if allowed >= len(negatives):
            out[fpr] = 1.0
            continue
        threshold = negatives[allowed]
        out[fpr] = float(np.mean(positives < threshold))
    return out


def k_reciprocal_reference(
    q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Dense k-reciprocal re-ranking (Zhong et al. 2017), step by step as published.

    Inputs are (squared) distances; returns the re-ranked query x gallery distances.
    """
    q_g = np.asarray(q_g_dist, dtype=np.float32)
    num_q, num_g = q_g.shape
    full = np.block(
        [[np.asarray(q_q_dist, dtype=np.float32), q_g], [q_g.T, np.asarray(g_g_dist, dtype=np.float32)]]
    )
    num_all = num_q + num_g
    # Each column divided by its maximum, then transposed: row i holds distances *to* i.
    original = (full / full.max(axis=0)).T
    initial_rank = np.argsort(original, axis=1)
    half_k1 = int(np.around(k1 / 2.0))

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = initial_rank[i, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[np.any(backward == i, axis=1)]

    weights = np.zeros((num_all, num_all), dtype=np.float32)
    for i in range(num_all):
        neighbours = reciprocal(i, k1)
        expanded = neighbours
        for candidate in neighbours:
            candidate_set = reciprocal(int(candidate), half_k1)
            overlap = len(np.intersect1d(candidate_set, neighbours))
            if overlap > 2.0 / 3.0 * len(candidate_set):
                expanded = np.append(expanded, candidate_set)
        expanded = np.unique(expanded)
        gaussian = np.exp(-original[i, expanded])
        weights[i, expanded] = gaussian / gaussian.sum()

    if k2 != 1:
        expanded_weights = np.zeros_like(weights)
        for i in range(num_all):
            expanded_weights[i] = weights[initial_rank[i, :k2]].mean(axis=0)
        weights = expanded_weights

    jaccard = np.zeros((num_q, num_all), dtype=np.float32)
    for i in range(num_q):
        shared = np.zeros(num_all, dtype=np.float32)
        for k in np.nonzero(weights[i])[0]:
            holders = np.nonzero(weights[:, k])[0]
            shared[holders] += np.minimum(weights[i, k], weights[holders, k])
        jaccard[i] = 1.0 - shared / (2.0 - shared)

    final = (1.0 - lambda_value) * jaccard + lambda_value * original[:num_q]
    return final[:, num_q:]


def evaluate_rank_field_style(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
    """The evaluator most re-ID toolkits fall back to without their compiled extension.

    Written from its well-known procedure, as the baseline of ``bench/bench_metrics.py``: argsort the
    whole q×g matrix up front, build the whole match matrix, then per query remove same-id-same-camera
    items and accumulate precision in a Python loop over every gallery position. Same values as
    :func:`evaluate_rank_reference`; much slower and O(q×g) extra memory.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for qi in range(distmat.shape[0]):
        order = indices[qi]
        keep = np.invert((g_pids[order] == q_pids[qi]) & (g_camids[order] == q_camids[qi]))
        raw_cmc = matches[qi][keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        last = np.where(raw_cmc == 1)[0].max()
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
        all_ap.append(tmp_cmc.sum() / num_rel)
    return {
        "cmc": np.asarray(all_cmc, dtype=np.float64).sum(0) / len(all_cmc),
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "num_valid_queries": len(all_ap),
    }
