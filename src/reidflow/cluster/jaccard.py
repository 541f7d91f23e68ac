"""Jaccard distance of k-reciprocal encodings (Zhong et al. 2017, as the MMT/SpCL pseudo-label step
uses it), computed sparsely: memory O(N·k), never an N×N array.

For L2-normalized features ``x`` and ``d(i, j) = 2 - 2·<x_i, x_j>``:

1. ``nn(i, k)``: the first ``k + 1`` items of ``i``'s neighbour list (ascending distance, ties by
   index; ``i`` itself is among them). ``R(i, k)``: the items ``j`` of ``nn(i, k)`` with ``i`` in
   ``nn(j, k)`` (k-reciprocal neighbours).
2. ``R*(i)``: ``R(i, k1)`` plus ``R(c, round(k1/2))`` of every ``c`` in ``R(i, k1)`` whose overlap with
   ``R(i, k1)`` is more than 2/3 of ``|R(c, round(k1/2))|`` (duplicates removed).
3. ``V[i, j] = softmax_j(-d(i, j))`` over ``j`` in ``R*(i)``, zero elsewhere.
4. Local query expansion (``k2 > 1``): ``V[i] <- mean of V[j]`` over the first ``k2`` neighbours of ``i``.
5. ``s(i, j) = Σ_k min(V[i, k], V[j, k])``; ``jaccard(i, j) = 1 - s / (2 - s)``, clamped at 0.

Pairs that share no column of ``V`` have ``s = 0``, i.e. distance exactly 1: they are simply not
stored. The result is a CSR matrix holding every pair with ``s > 0`` (the diagonal included, at 0;
explicit zeros, e.g. of duplicate points, are stored, never dropped), so a consumer that reads a
missing entry as "distance 1 / not a neighbour" sees exactly the dense matrix. The dense algorithm
(``bench/bench_pseudo_labels.py`` holds it, as the field writes it) needs ~3 N×N float arrays.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import scipy.sparse as sp

from reidflow.cluster.neighbours import (
    approximate_neighbours,
    as_features,
    nearest_neighbours,
    pair_distances,
)
from reidflow.errors import ConfigError

TRIPLES_PER_STEP = 1 << 20  # (row, shared column, other row) triples expanded at once
_SETS_PER_STEP = 1 << 22  # candidate-set cells compared at once while expanding R(i, k1)


def _reciprocal_mask(neighbours: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """``mask[r, p]``: ``neighbours[rows[r], p]`` (``p <= k``) has ``rows[r]`` among its first ``k + 1``."""
    forward = neighbours[rows, : k + 1]
    backward = neighbours[forward, : k + 1]
    return np.any(backward == rows[:, None, None], axis=2)


def expanded_sets(neighbours: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """``R*(i)`` of every item as flat ``(item, member)`` pairs, sorted by item then member, unique."""
    num = neighbours.shape[0]
    k1 = min(k1, neighbours.shape[1] - 1)
    half = min(int(np.around(k1 / 2.0)), k1)
    half_sets = np.where(_reciprocal_mask(neighbours, half, np.arange(num)), neighbours[:, : half + 1], -1)
    half_sizes = (half_sets >= 0).sum(axis=1)
    out_rows, out_cols = [], []
    step = max(1, _SETS_PER_STEP // ((k1 + 1) ** 2 * (half + 1)))
    for start in range(0, num, step):
        rows = np.arange(start, min(start + step, num))
        core = np.where(_reciprocal_mask(neighbours, k1, rows), neighbours[rows, : k1 + 1], -1)
        safe = np.maximum(core, 0)
        candidate_sets = half_sets[safe]  # (r, k1 + 1, half + 1)
        in_core = np.any(candidate_sets[..., None] == core[:, None, None, :], axis=3) & (candidate_sets >= 0)
        accepted = (core >= 0) & (in_core.sum(axis=2) > 2.0 / 3.0 * half_sizes[safe])
        added = np.where(accepted[..., None], candidate_sets, -1).reshape(len(rows), -1)
        members = np.sort(np.concatenate([core, added], axis=1), axis=1)
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        r, c = np.nonzero(keep)
        out_rows.append(rows[r])
        out_cols.append(members[r, c])
    return np.concatenate(out_rows), np.concatenate(out_cols)


def encoding(features: np.ndarray, neighbours: np.ndarray, k1: int, k2: int) -> sp.csr_matrix:
    """The sparse k-reciprocal encoding ``V`` (steps 2-4), float64 CSR with sorted indices."""
    num = features.shape[0]
    rows, cols = expanded_sets(neighbours, k1)
    weights = np.exp(-pair_distances(features, rows, cols))
    weights /= np.bincount(rows, weights=weights, minlength=num)[rows]
    v = sp.csr_matrix((weights, (rows, cols)), shape=(num, num))
    k2 = min(k2, neighbours.shape[1])
    if k2 > 1:
        expand_rows = np.repeat(np.arange(num), k2)
        average = sp.csr_matrix(
            (np.full(expand_rows.size, 1.0 / k2), (expand_rows, neighbours[:, :k2].ravel())), shape=(num, num)
        )
        v = (average @ v).tocsr()
    v.sort_indices()
    return v


def _row_steps(v: sp.csr_matrix, v_cols: sp.csc_matrix) -> list[int]:
    """Row boundaries so that each step expands at most ~TRIPLES_PER_STEP triples."""
    per_column = np.diff(v_cols.indptr)
    cumulative = np.concatenate([[0], np.cumsum(per_column[v.indices])])
    per_row = cumulative[v.indptr[1:]] - cumulative[v.indptr[:-1]]
    bounds, load = [0], 0
    for row, triples in enumerate(per_row.tolist()):
        if row > bounds[-1] and load + triples > TRIPLES_PER_STEP:
            bounds.append(row)
            load = 0
        load += triples
    bounds.append(v.shape[0])
    return bounds


def _shared_mass(v: sp.csr_matrix, v_cols: sp.csc_matrix, start: int, stop: int) -> sp.coo_matrix:
    """``s(i, j)`` for rows ``start..stop-1`` (as rows 0..) and every ``j`` sharing a column with them (COO)."""
    indptr, indices, data = v.indptr, v.indices, v.data
    col_ptr, col_rows, col_data = v_cols.indptr, v_cols.indices, v_cols.data
    lo, hi = indptr[start], indptr[stop]
    row_of = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
    shared_col, value = indices[lo:hi], data[lo:hi]
    fan_out = col_ptr[shared_col + 1] - col_ptr[shared_col]
    total = int(fan_out.sum())
    first = np.repeat(col_ptr[shared_col] - (np.cumsum(fan_out) - fan_out), fan_out) + np.arange(total)
    contribution = np.minimum(np.repeat(value, fan_out), col_data[first])
    pair_rows = np.repeat(row_of, fan_out)
    return sp.coo_matrix((contribution, (pair_rows, col_rows[first])), shape=(stop - start, v.shape[1]))


def jaccard_from_encoding(v: sp.csr_matrix) -> sp.csr_matrix:
    """Step 5 over the pairs sharing a column of ``v`` (float64 CSR, sorted indices, explicit zeros kept)."""
    v_cols = v.tocsc()
    v_cols.sort_indices()
    bounds = _row_steps(v, v_cols)
    blocks = []
    for start, stop in pairwise(bounds):
        block = _shared_mass(v, v_cols, start, stop).tocsr()  # sums duplicate (i, j) contributions
        block.sum_duplicates()
        blocks.append(block)
    shared = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    shared.sort_indices()
    # s > 0 for every stored pair (V > 0), so no entry is dropped; distances that are 0 stay stored
    jaccard = sp.csr_matrix(
        (np.maximum(1.0 - shared.data / (2.0 - shared.data), 0.0), shared.indices, shared.indptr),
        shape=shared.shape,
    )
    return jaccard


def check_k(k1: int, k2: int) -> tuple[int, int]:
    if int(k1) < 1:
        raise ConfigError(f"jaccard: k1 must be >= 1, got {k1}")
    if int(k2) < 1:
        raise ConfigError(f"jaccard: k2 must be >= 1, got {k2}")
    return int(k1), int(k2)


def jaccard_distance(
    features: Any,
    k1: int = 20,
    k2: int = 6,
    knn: str = "exact",
    nprobe: int = 16,
    nlist: int | None = None,
) -> sp.csr_matrix:
    """Sparse k-reciprocal Jaccard distances of ``features`` (N×D, L2-normalized by the caller).

    Returns an N×N float64 CSR matrix with sorted indices; a missing entry means distance 1 (the pair
    shares no k-reciprocal neighbour). See the module docstring for the definition. ``knn="ivf"``
    takes the neighbour lists from a faiss IVF index (approximate; see
    :func:`reidflow.cluster.neighbours.approximate_neighbours`) instead of the exact tiled search.
    """
    k1, k2 = check_k(k1, k2)
    x = as_features(features, "jaccard_distance")
    if knn == "exact":
        _, neighbours = nearest_neighbours(x, max(k1 + 1, k2))
    elif knn == "ivf":
        _, neighbours = approximate_neighbours(x, max(k1 + 1, k2), nprobe=nprobe, nlist=nlist)
    else:
        raise ConfigError(f"jaccard: knn must be 'exact' or 'ivf', got {knn!r}")
    return jaccard_from_encoding(encoding(x, neighbours, k1, k2))
