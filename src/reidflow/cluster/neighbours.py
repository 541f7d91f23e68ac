"""Exact k nearest neighbours of L2-normalized features, tile by tile.

Distances are squared Euclidean on the unit sphere, ``d(i, j) = 2 - 2·<x_i, x_j>`` (float32, clamped
at 0). Ties are broken by index (the lower index first), so the neighbour lists are a pure function
of the features: the same rule a dense ``argsort(kind="stable")`` over the whole row applies.

The N×N distances are never held: the upper triangle is computed in T×T tiles (each tile once, used
for its rows and, transposed, for its columns: half the arithmetic of a full pass) and every row keeps
a running list of its k best ``(distance, index)``. Memory is O(N·k) plus a few tiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reidflow.errors import DataError

TILE = 2048  # rows/columns of one distance tile (16 MB float32)
PAIR_ELEMENTS = 1 << 20  # feature values gathered at once for pair distances (4 MB float32)


def as_features(features: Any, who: str = "features") -> np.ndarray:
    """A C-contiguous float32 N×D array; non-finite values or a wrong shape raise a one-line DataError."""
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{who}: expected a non-empty N×D feature matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int(np.argmax(~np.isfinite(array).all(axis=1)))
        raise DataError(f"{who}: row {bad} holds a NaN or Inf value")
    return array


def pair_distances(features: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``2 - 2·<x_rows, x_cols>`` for index pairs (float32 products, returned as float64, clamped at 0)."""
    out = np.empty(rows.size, dtype=np.float64)
    step = max(1, PAIR_ELEMENTS // max(features.shape[1], 1))
    for s in range(0, rows.size, step):
        r, c = rows[s : s + step], cols[s : s + step]
        dots = np.einsum("ij,ij->i", features[r], features[c])
        out[s : s + step] = np.maximum(2.0 - 2.0 * dots.astype(np.float64), 0.0)
    return out


class _RunningTopK:
    """Per row, the k smallest ``(distance, index)`` seen so far, sorted."""

    def __init__(self, num: int, k: int) -> None:
        self.k = k
        self.dist = np.full((num, k), np.inf, dtype=np.float32)
        self.index = np.full((num, k), np.iinfo(np.int64).max, dtype=np.int64)

    def offer(self, row_start: int, col_start: int, dist: torch.Tensor) -> None:
        """Merge a candidate block: ``dist[r, c]`` is the distance of row ``row_start + r`` to column
        ``col_start + c``."""
        num_rows, num_cols = dist.shape
        kk = min(self.k, num_cols)
        take = min(kk + 1, num_cols)
        values, index = torch.topk(dist, take, dim=1, largest=False, sorted=True)
        cand_r = np.repeat(np.arange(num_rows), kk)
        cand_d = values[:, :kk].reshape(-1).numpy()
        cand_c = index[:, :kk].reshape(-1).numpy()
        if take > kk:
            tied = torch.nonzero(values[:, kk] == values[:, kk - 1]).flatten()
            if tied.numel():  # a tie at the k-th distance: take every entry <= it for those rows
                block = dist.index_select(0, tied)
                r, c = torch.nonzero(block <= values[tied, kk - 1 : kk], as_tuple=True)
                tied_np = tied.numpy()
                keep = ~np.isin(cand_r, tied_np)
                cand_r = np.concatenate([cand_r[keep], tied_np[r.numpy()]])
                cand_d = np.concatenate([cand_d[keep], block[r, c].numpy()])
                cand_c = np.concatenate([cand_c[keep], c.numpy()])
        rows = slice(row_start, row_start + num_rows)
        all_r = np.concatenate([np.repeat(np.arange(num_rows), self.k), cand_r])
        all_d = np.concatenate([self.dist[rows].ravel(), cand_d])
        all_i = np.concatenate([self.index[rows].ravel(), cand_c + col_start])
        order = np.lexsort((all_i, all_d, all_r))
        all_r, all_d, all_i = all_r[order], all_d[order], all_i[order]
        rank = np.arange(all_r.size) - np.searchsorted(all_r, all_r)
        first = rank < self.k
        self.dist[rows] = all_d[first].reshape(num_rows, self.k)
        self.index[rows] = all_i[first].reshape(num_rows, self.k)


def nearest_neighbours(
    features: np.ndarray, k: int, tile: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, indices)``, both N×k, ascending by (distance, index); each item is among its own.

    ``k`` is capped at N. Ties at the k-th distance are resolved by index, exactly.
    """
    num = features.shape[0]
    k = min(int(k), num)
    if k < 1:
        raise DataError(f"nearest_neighbours: k must be >= 1, got {k}")
    tile = int(tile or TILE)
    x = torch.from_numpy(features)
    two = torch.tensor(2.0, dtype=x.dtype)
    best = _RunningTopK(num, k)
    for a in range(0, num, tile):
        xa = x[a : a + tile]
        for b in range(a, num, tile):
            dist = torch.addmm(two, xa, x[b : b + tile].T, alpha=-2.0).clamp_(min=0.0)
            best.offer(a, b, dist)
            if b != a:  # the same tile, seen from its columns (a contiguous copy: topk along rows)
                best.offer(b, a, dist.T.contiguous())
    return best.dist, best.index


def approximate_neighbours(
    features: np.ndarray, k: int, nprobe: int = 16, nlist: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`nearest_neighbours`, from a faiss inverted-file index (IVF, inner product): each item
    is compared with the items of its ``nprobe`` nearest of ``nlist`` (default ``round(sqrt(N))``)
    k-means cells instead of all N, so large N costs a fraction of the exact N²·D.

    Approximate: a true neighbour in a cell that is not probed is missed (recall, not exactness, is
    what ``nprobe`` buys). Deterministic for given features, seed and thread count. Rows where the
    probed cells hold fewer than k items fall back to the exact computation.
    """
    import faiss

    num, dim = features.shape
    k = min(int(k), num)
    if k < 1:
        raise DataError(f"approximate_neighbours: k must be >= 1, got {k}")
    nlist = int(nlist or max(1, round(np.sqrt(num))))
    if nlist > num:
        raise DataError(f"approximate_neighbours: nlist={nlist} exceeds the {num} items")
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    sample = np.random.default_rng(seed).choice(num, min(num, 40 * nlist), replace=False)
    index.train(features[np.sort(sample)])
    index.add(features)
    index.nprobe = int(min(nprobe, nlist))
    out_d = np.empty((num, k), dtype=np.float32)
    out_i = np.empty((num, k), dtype=np.int64)
    step = max(1, (1 << 22) // max(dim, 1))
    for start in range(0, num, step):
        stop = min(start + step, num)
        sims, idx = index.search(features[start:stop], k)
        dist = np.maximum(2.0 - 2.0 * sims, 0.0).astype(np.float32)
        order = np.lexsort((idx, dist), axis=1)  # (distance, index) within each row
        out_d[start:stop] = np.take_along_axis(dist, order, axis=1)
        out_i[start:stop] = np.take_along_axis(idx, order, axis=1)
    short = np.flatnonzero((out_i < 0).any(axis=1))
    if short.size:
        x = torch.from_numpy(features)
        for row in short:
            d = torch.mv(x, x[row]).mul_(-2.0).add_(2.0).clamp_(min=0.0).numpy()
            cand = np.argpartition(d, k - 1)[:k] if k < num else np.arange(num)
            order = np.lexsort((cand, d[cand]))
            out_i[row], out_d[row] = cand[order], d[cand][order]
    return out_d, out_i
