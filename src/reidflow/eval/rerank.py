"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), sparse and memory-bounded.

Input contract (read this when porting code): :func:`k_reciprocal` uses the distances it is given
as they are, and expects them *squared* (``||f_q - f_g||^2``). The widely used ``re_ranking(q_g,
q_q, g_g)`` of other toolkits squares whatever it is given first. So ``re_ranking(d)`` equals
``k_reciprocal(d ** 2)``, which is also ``k_reciprocal(d, distance="euclidean")``: pass
``distance="euclidean"`` when you hand over plain (not squared) distances, as you would to that
function. ``k_reciprocal_from_features`` computes squared Euclidean distances itself.

Same semantics as the widely used dense numpy version (see :func:`reference.k_reciprocal_reference`):

1. ``M`` = the (q+g) x (q+g) matrix of (squared) distances; ``original[i, j] = M[j, i] / max_k M[k, i]``
   (each column divided by its maximum, then transposed).
2. ``initial_rank[i]`` = items by ascending ``original[i]``; only the first ``max(k1 + 1, k2)`` are kept.
3. ``R(i, k)`` = the items ``j`` among the first ``k + 1`` of ``i`` that have ``i`` among their first
   ``k + 1`` (k-reciprocal neighbours). ``R(i, k1)`` is expanded with ``R(c, round(k1 / 2))`` of every
   candidate ``c`` in it whose overlap with ``R(i, k1)`` is more than 2/3 of its own size.
4. ``V[i, j] = exp(-original[i, j])`` over the expanded set, normalized to sum to 1 (sparse rows).
5. Local query expansion: ``V[i] <- mean of V[j]`` over the first ``k2`` of ``initial_rank[i]``.
6. Jaccard distance ``1 - s / (2 - s)`` with ``s = sum_k min(V[i, k], V[j, k])`` via the sparse columns.
7. ``final = (1 - lambda) * jaccard + lambda * original``, query rows x gallery columns.

What differs from the dense version is only how: columns of ``M`` are produced a block at a time
(from the three distance matrices or directly from features), neighbours come from a top-k per
block instead of a full argsort of an N x N matrix, ``V`` is a scipy CSR matrix and the Jaccard
step accumulates only the (query, gallery) pairs that share a neighbour. Ties in distances may pick
different neighbour sets than the dense version's (unstable) argsort.
"""

from __future__ import annotations

import logging
from itertools import pairwise
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from reidflow.errors import ConfigError, DataError

_BLOCK_ELEMENTS = 1 << 23  # distances materialized at once (~32 MB float32)
_TRIPLES_PER_STEP = 1 << 22  # (query, shared neighbour, gallery) triples accumulated at once
_JACCARD_CELLS = 1 << 21  # query x gallery cells of one Jaccard step (float64 accumulators)

log = logging.getLogger(__name__)


class _MatrixColumns:
    """Columns of ``M`` assembled from the q-g, q-q and g-g distance matrices."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_q, self.num_g = q_g.shape
        self.num_all = self.num_q + self.num_g

    def columns(self, start: int, stop: int) -> np.ndarray:
        """``out[r, j] = M[j, start + r]`` as float32."""
        out = np.empty((stop - start, self.num_all), dtype=np.float32)
        nq = self.num_q
        q_stop = min(stop, nq)
        if start < nq:  # query columns: M[:nq, i] = q_q[:, i], M[nq:, i] = q_g[i, :]
            out[: q_stop - start, :nq] = self.q_q[:, start:q_stop].T
            out[: q_stop - start, nq:] = self.q_g[start:q_stop]
        g_start = max(start, nq)
        if stop > nq:  # gallery columns: M[:nq, nq+g] = q_g[:, g], M[nq:, nq+g] = g_g[:, g]
            rows = slice(g_start - start, stop - start)
            out[rows, :nq] = self.q_g[:, g_start - nq : stop - nq].T
            out[rows, nq:] = self.g_g[:, g_start - nq : stop - nq].T
        return out

    def entries(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        """``M[row, col]`` for flat index arrays, as float32."""
        nq = self.num_q
        out = np.empty(col.shape, dtype=np.float32)
        row_q, col_q = row < nq, col < nq
        for mask, matrix, r, c in (
            (row_q & col_q, self.q_q, row, col),
            (row_q & ~col_q, self.q_g, row, col - nq),
            (~row_q & col_q, self.q_g, col, row - nq),  # M[nq + g, i] = q_g[i, g]
            (~row_q & ~col_q, self.g_g, row - nq, col - nq),
        ):
            out[mask] = matrix[r[mask], c[mask]]
        return out


class _FeatureColumns:
    """Columns of ``M`` = squared Euclidean distances between feature vectors, computed on demand."""

    def __init__(self, q_feat: np.ndarray, g_feat: np.ndarray) -> None:
        self.features = np.ascontiguousarray(np.concatenate([q_feat, g_feat]).astype(np.float32))
        self.norms = np.einsum("ij,ij->i", self.features, self.features)
        self.num_q, self.num_g = len(q_feat), len(g_feat)
        self.num_all = self.num_q + self.num_g

    def columns(self, start: int, stop: int) -> np.ndarray:
        block = self.features[start:stop] @ self.features.T
        block *= -2.0
        block += self.norms[start:stop, None]
        block += self.norms[None, :]
        np.maximum(block, 0.0, out=block)
        return block

    def entries(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        out = np.empty(col.shape, dtype=np.float32)
        step = 1 << 20
        for s in range(0, col.size, step):
            c, r = col[s : s + step], row[s : s + step]
            dots = np.einsum("ij,ij->i", self.features[c], self.features[r])
            out[s : s + step] = np.maximum(self.norms[c] + self.norms[r] - 2.0 * dots, 0.0)
        return out


def _block_rows(num_all: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(num_all, 1))


def _column_max_and_neighbours(source: Any, num_neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the columns of ``M``: each column's max and its nearest items (ascending)."""
    num_all = source.num_all
    col_max = np.empty(num_all, dtype=np.float32)
    neighbours = np.empty((num_all, num_neighbours), dtype=np.int64)
    rows = _block_rows(num_all)
    for start in range(0, num_all, rows):
        stop = min(start + rows, num_all)
        block = source.columns(start, stop)
        if np.isnan(block).any():
            raise DataError(
                f"k_reciprocal: NaN distance in column {start + int(np.isnan(block).any(1).argmax())}"
            )
        col_max[start:stop] = block.max(axis=1)
        # dividing a column by its (positive) max keeps the order, so rank the raw distances
        _, index = torch.topk(torch.from_numpy(block), num_neighbours, dim=1, largest=False, sorted=True)
        neighbours[start:stop] = index.numpy()
    degenerate = col_max <= 0
    if np.any(degenerate):
        # Every distance to these items is 0 (e.g. a collapsed model embeds everything alike). The
        # dense original divides by 0 and yields NaN; we leave such columns unscaled so evaluation
        # still reports the (chance-level) result instead of failing.
        log.warning(
            "k_reciprocal: %d item(s) at distance 0 from everything (first: %d); their column is not "
            "normalized",
            int(degenerate.sum()),
            int(np.argmax(degenerate)),
        )
        col_max[degenerate] = 1.0
    return col_max, neighbours


def _reciprocal_mask(neighbours: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """``mask[r, p]``: ``neighbours[rows[r], p]`` (p <= k) has ``rows[r]`` among its first k + 1."""
    forward = neighbours[rows, : k + 1]
    backward = neighbours[forward, : k + 1]
    return np.any(backward == rows[:, None, None], axis=2)


def _expanded_sets(neighbours: np.ndarray, k1: int, num_all: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(item, member)`` pairs of every item's expanded k-reciprocal set, sorted, unique."""
    half = int(np.around(k1 / 2.0))
    half_sets = np.where(
        _reciprocal_mask(neighbours, half, np.arange(num_all)), neighbours[:, : half + 1], -1
    )  # (N, half + 1), -1 = absent
    half_sizes = (half_sets >= 0).sum(axis=1)
    out_rows, out_cols = [], []
    step = max(1, (1 << 22) // ((k1 + 1) ** 2 * (half + 1)))
    for start in range(0, num_all, step):
        rows = np.arange(start, min(start + step, num_all))
        core = np.where(_reciprocal_mask(neighbours, k1, rows), neighbours[rows, : k1 + 1], -1)
        candidate_sets = half_sets[np.maximum(core, 0)]  # (r, k1 + 1, half + 1)
        in_core = np.any(candidate_sets[..., None] == core[:, None, None, :], axis=3) & (candidate_sets >= 0)
        overlap = in_core.sum(axis=2)
        accepted = (core >= 0) & (overlap > 2.0 / 3.0 * half_sizes[np.maximum(core, 0)])
        added = np.where(accepted[..., None], candidate_sets, -1).reshape(len(rows), -1)
        members = np.sort(np.concatenate([core, added], axis=1), axis=1)
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        r, c = np.nonzero(keep)
        out_rows.append(rows[r])
        out_cols.append(members[r, c])
    return np.concatenate(out_rows), np.concatenate(out_cols)


def _weights(source: Any, col_max: np.ndarray, neighbours: np.ndarray, k1: int, k2: int) -> sp.csr_matrix:
    """Sparse ``V``: Gaussian weights of the expanded sets, then local query expansion over k2."""
    num_all = source.num_all
    rows, cols = _expanded_sets(neighbours, k1, num_all)
    original = source.entries(rows, cols).astype(np.float64) / col_max[rows]  # original[i, j]
    gauss = np.exp(-original)
    gauss /= np.bincount(rows, weights=gauss, minlength=num_all)[rows]
    weights = sp.csr_matrix((gauss, (rows, cols)), shape=(num_all, num_all))
    if k2 != 1:
        k2 = min(k2, neighbours.shape[1])
        expand_rows = np.repeat(np.arange(num_all), k2)
        expand = sp.csr_matrix(
            (np.full(expand_rows.size, 1.0 / k2), (expand_rows, neighbours[:, :k2].ravel())),
            shape=(num_all, num_all),
        )
        weights = (expand @ weights).tocsr()
    weights.sort_indices()
    return weights


def _jaccard_rows(
    weights: sp.csr_matrix, num_q: int, num_g: int, start: int, stop: int, gallery_cols: sp.csc_matrix
) -> np.ndarray:
    """Jaccard distances of queries ``start..stop-1`` to every gallery item (dense block)."""
    indptr, indices, data = weights.indptr, weights.indices, weights.data
    col_ptr, col_rows, col_data = gallery_cols.indptr, gallery_cols.indices, gallery_cols.data
    lo, hi = indptr[start], indptr[stop]
    query_of = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
    shared_item, query_value = indices[lo:hi], data[lo:hi]
    fan_out = col_ptr[shared_item + 1] - col_ptr[shared_item]
    total = int(fan_out.sum())
    pair_query = np.repeat(query_of, fan_out)
    first = np.repeat(col_ptr[shared_item] - (np.cumsum(fan_out) - fan_out), fan_out) + np.arange(total)
    contribution = np.minimum(np.repeat(query_value, fan_out), col_data[first])
    shared = np.bincount(
        pair_query * num_g + col_rows[first], weights=contribution, minlength=(stop - start) * num_g
    ).reshape(stop - start, num_g)
    return 1.0 - shared / (2.0 - shared)


def _query_steps(weights: sp.csr_matrix, gallery_cols: sp.csc_matrix, num_q: int, num_g: int) -> list[int]:
    """Query boundaries so that each step holds a bounded number of triples and dense cells."""
    per_item = np.diff(gallery_cols.indptr)
    running = np.concatenate([[0], np.cumsum(per_item[weights.indices])])
    per_query = running[weights.indptr[1 : num_q + 1]] - running[weights.indptr[:num_q]]
    bounds, load, cells = [0], 0, 0
    for q in range(num_q):
        if q > bounds[-1] and (load + per_query[q] > _TRIPLES_PER_STEP or cells + num_g > _JACCARD_CELLS):
            bounds.append(q)
            load, cells = 0, 0
        load += int(per_query[q])
        cells += num_g
    bounds.append(num_q)
    return bounds


def _rerank(source: Any, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    if int(k1) < 1:
        raise ConfigError(f"k1: expected >= 1, got {k1}")
    if int(k2) < 1:
        raise ConfigError(f"k2: expected >= 1, got {k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ConfigError(f"lambda_value: expected a weight in [0, 1], got {lambda_value}")
    num_q, num_g, num_all = source.num_q, source.num_g, source.num_all
    if num_q == 0 or num_g == 0:
        raise DataError(f"k_reciprocal: need at least one query and one gallery item, got {num_q} x {num_g}")
    # with fewer items than k1 + 1 every neighbour list is simply all items, as in the dense version
    num_neighbours = min(max(int(k1) + 1, int(k2)), num_all)
    col_max, neighbours = _column_max_and_neighbours(source, num_neighbours)
    weights = _weights(source, col_max, neighbours, int(k1), int(k2))
    gallery_cols = weights[num_q:].tocsc()
    gallery_cols.sort_indices()

    final = np.empty((num_q, num_g), dtype=np.float32)
    bounds = _query_steps(weights, gallery_cols, num_q, num_g)
    for start, stop in pairwise(bounds):
        jaccard = _jaccard_rows(weights, num_q, num_g, start, stop, gallery_cols)
        original = source.columns(start, stop)[:, num_q:] / col_max[start:stop, None]
        final[start:stop] = (1.0 - lambda_value) * jaccard + lambda_value * original
    return final


DISTANCE_KINDS = ("squared", "euclidean")


def k_reciprocal(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    distance: str = "squared",
) -> np.ndarray:
    """Re-ranked query x gallery distances (float32) from q-g, q-q and g-g distances.

    ``distance="squared"`` (default): the matrices hold squared Euclidean distances and are used as
    given. ``distance="euclidean"``: they hold plain distances and are squared first, which is what
    the common ``re_ranking`` function does with its input; ported code that called it gets the same
    numbers this way. The original-distance term of the result is on the squared scale either way.
    """
    if distance not in DISTANCE_KINDS:
        raise ConfigError(f"distance: expected one of {list(DISTANCE_KINDS)}, got {distance!r}")
    q_g = np.asarray(q_g_dist, dtype=np.float32)
    q_q = np.asarray(q_q_dist, dtype=np.float32)
    g_g = np.asarray(g_g_dist, dtype=np.float32)
    if distance == "euclidean":
        q_g, q_q, g_g = np.square(q_g), np.square(q_q), np.square(g_g)
    if q_g.ndim != 2:
        raise DataError(f"q_g_dist: expected a 2-D (queries x gallery) matrix, got shape {q_g.shape}")
    num_q, num_g = q_g.shape
    if q_q.shape != (num_q, num_q):
        raise DataError(f"q_q_dist: expected shape ({num_q}, {num_q}), got {q_q.shape}")
    if g_g.shape != (num_g, num_g):
        raise DataError(f"g_g_dist: expected shape ({num_g}, {num_g}), got {g_g.shape}")
    return _rerank(_MatrixColumns(q_g, q_q, g_g), k1, k2, lambda_value)


def k_reciprocal_from_features(
    q_feat: Any, g_feat: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Same as :func:`k_reciprocal` on squared Euclidean distances computed block by block.

    Only the output (queries x gallery, float32) and O(N * k) neighbour data are held in memory,
    so N = q + g in the tens of thousands fits.
    """
    if hasattr(q_feat, "detach"):
        q_feat = q_feat.detach().cpu().numpy()
    if hasattr(g_feat, "detach"):
        g_feat = g_feat.detach().cpu().numpy()
    q, g = np.asarray(q_feat), np.asarray(g_feat)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise DataError(
            f"k_reciprocal_from_features: expected 2-D q_feat and g_feat with the same "
            f"feature size, got {q.shape} and {g.shape}"
        )
    return _rerank(_FeatureColumns(q, g), k1, k2, lambda_value)


def squared_euclidean(a: Any, b: Any) -> np.ndarray:
    """Dense squared Euclidean distances (float32), the inputs re-ranking expects."""
    return _FeatureColumns(np.asarray(a), np.asarray(b)).columns(0, len(a))[:, len(a) :]
