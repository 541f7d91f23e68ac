"""Re-ID ranking metrics under the standard protocol, vectorized and memory-bounded.

Definitions (the field's standard evaluator):

* Per query, gallery items with the same pid AND the same camid are removed ("junk"). A query with
  no remaining same-pid item is skipped and counted in ``num_skipped_queries``.
* The gallery is ranked by ascending distance with a **stable** sort: equal distances keep gallery
  index order. The rank of gallery item ``j`` is therefore the number of kept items ``i`` with
  ``d_i < d_j`` or ``d_i == d_j and i < j``.
* CMC[k-1] = fraction of valid queries whose first match is within the top ``k``.
* AP = mean over the query's matches of the precision at the match's rank; mAP averages over valid
  queries. INP = #matches / rank of the last match; mINP averages over valid queries.
* ``topk_ap=k``: AP truncated at rank ``k`` and divided by ``min(#matches, k)`` (the normalization of
  the mean-average-precision-at-k used by the VisDA-2020 evaluation).
* All values are fractions in [0, 1].
* CUHK03 single-gallery-shot draws come from a per-query seeded generator
  (:func:`single_shot_uniforms`), so they do not depend on chunking; they are a different random
  stream from other toolkits', so single-shot CMC agrees with them statistically, not bit for bit.
* TPR@FPR keeps only the ``floor(max(fpr) * #negatives) + 1`` smallest negative distances, so its
  memory grows with the largest requested FPR (1e-2 at Market size: ~0.5M values).

How it is fast: nothing is argsorted. For each query only the ranks of its matches are needed, and
the rank of a match is a count of smaller distances. Per chunk of query rows, every distance is
mapped to one of ``_NUM_BINS`` bins by a monotone function of the distance (row minimum to the
row's largest match distance); a per-row histogram gives, for each match, the number of items in
lower bins, and only the few items sharing a bin with a match are sorted exactly. Memory is bounded
by the chunk size, and the distances may arrive chunk by chunk (a callable or an iterator), so a
query x gallery matrix never has to exist at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reidflow.errors import ConfigError, DataError

_NUM_BINS = 1024
_DEFAULT_CHUNK_ELEMENTS = 1 << 22  # distances fetched per chunk (~16 MB as float32)
_TILE_ELEMENTS = 1 << 18  # distances processed at once: small enough to stay in the CPU caches

DistanceSource = Any  # 2-D array / tensor, callable(start, stop) -> rows, or iterable of row blocks


# --------------------------------------------------------------------------- input handling


def _as_float_array(values: Any, name: str) -> np.ndarray:
    """A numpy float32/float64 view or copy of an array or tensor."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor without importing torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        array = array.astype(np.float64)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind != "f":
        raise DataError(f"{name}: expected numeric distances, got dtype {array.dtype}")
    return array


def _as_labels(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array of integer labels, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        if array.dtype.kind == "f" and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise DataError(f"{name}: expected integer labels, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _rows_per_chunk(chunk_size: int | None, num_g: int) -> int:
    if chunk_size is None:
        return max(1, _DEFAULT_CHUNK_ELEMENTS // max(num_g, 1))
    if int(chunk_size) < 1:
        raise ConfigError(f"chunk_size: expected a positive number of query rows, got {chunk_size}")
    return int(chunk_size)


def iter_distance_blocks(
    source: DistanceSource, num_q: int, num_g: int, chunk_rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, block)`` covering query rows ``0..num_q-1`` in order.

    ``source`` is a 2-D array/tensor (sliced, not copied), a callable ``(start, stop) -> rows``
    called once per chunk, or any other iterable of 2-D row blocks (or 1-D single rows) in query
    order; iterable blocks larger than ``chunk_rows`` are split.
    """

    def checked(block: Any, start: int) -> np.ndarray:
        array = _as_float_array(block, "distmat")
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != num_g:
            raise DataError(
                f"distmat rows starting at query {start}: expected shape (n, {num_g}) "
                f"(one column per gallery item), got {array.shape}"
            )
        return array

    if isinstance(source, np.ndarray) or hasattr(source, "detach"):
        matrix = checked(source, 0)
        if matrix.shape[0] != num_q:
            raise DataError(
                f"distmat: expected shape ({num_q}, {num_g}) (queries x gallery), got {matrix.shape}"
            )
        for start in range(0, num_q, chunk_rows):
            yield start, matrix[start : start + chunk_rows]
        return
    if callable(source):
        for start in range(0, num_q, chunk_rows):
            stop = min(start + chunk_rows, num_q)
            block = checked(source(start, stop), start)
            if block.shape[0] != stop - start:
                raise DataError(f"distmat callable: asked for rows {start}:{stop}, got {block.shape[0]} rows")
            yield start, block
        return
    if not isinstance(source, Iterable):
        raise DataError(
            f"distmat: expected a 2-D array, a callable (start, stop) -> rows or an "
            f"iterable of row blocks, got {type(source).__name__}"
        )
    start = 0
    for raw in source:
        block = checked(raw, start)
        if start + block.shape[0] > num_q:
            raise DataError(f"distmat blocks: more than the {num_q} query rows expected")
        for offset in range(0, block.shape[0], chunk_rows):
            yield start + offset, block[offset : offset + chunk_rows]
        start += block.shape[0]
    if start != num_q:
        raise DataError(f"distmat blocks: expected {num_q} query rows in total, got {start}")


# --------------------------------------------------------------------------- gallery grouping


@dataclass(frozen=True)
class _GalleryGroups:
    """Gallery indices grouped by pid (ascending pid, ascending index within a pid)."""

    pids: np.ndarray  # unique gallery pids, sorted
    starts: np.ndarray  # start of each pid's run in ``order``
    counts: np.ndarray
    order: np.ndarray  # gallery indices sorted by (pid, index)

    @classmethod
    def build(cls, g_pids: np.ndarray) -> _GalleryGroups:
        order = np.argsort(g_pids, kind="stable")
        pids, starts, counts = np.unique(g_pids[order], return_index=True, return_counts=True)
        return cls(pids, starts, counts, order)

    def slot_of(self, q_pids: np.ndarray) -> np.ndarray:
        """Index into ``pids`` of each query's pid, or -1 when the pid is not in the gallery."""
        pos = np.searchsorted(self.pids, q_pids)
        pos_clipped = np.minimum(pos, max(len(self.pids) - 1, 0))
        found = (
            (len(self.pids) > 0) & (self.pids[pos_clipped] == q_pids)
            if len(self.pids)
            else np.zeros(len(q_pids), dtype=bool)
        )
        return np.where(found, pos_clipped, -1)

    def same_pid_items(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat ``(row, gallery_index)`` of every same-pid pair, rows ascending, indices ascending."""
        slots = self.slot_of(q_pids)
        counts = np.where(slots >= 0, self.counts[np.maximum(slots, 0)], 0)
        rows = np.repeat(np.arange(len(q_pids)), counts)
        if rows.size == 0:
            return rows, rows.copy()
        run_starts = np.cumsum(counts) - counts
        within = np.arange(rows.size) - np.repeat(run_starts, counts)
        cols = self.order[np.repeat(self.starts[np.maximum(slots, 0)], counts) + within]
        return rows, cols


# --------------------------------------------------------------------------- exact match ranks


def _match_ranks(
    block: np.ndarray,
    match_rows: np.ndarray,
    match_cols: np.ndarray,
    junk_rows: np.ndarray,
    junk_cols: np.ndarray,
    buffers: dict[str, np.ndarray],
) -> np.ndarray:
    """0-based rank of each match among the row's non-junk items (stable tie rule).

    ``block`` is (rows x gallery), C-contiguous; matches and junk are flat (row, column) pairs.
    Each distance goes to a bin by a monotone map of the row (row minimum -> 0, the row's largest
    match distance -> ``_NUM_BINS``, anything far above -> one bin more), so an item in a lower bin
    than a match is certainly ranked before it; only items sharing a bin with a match are compared
    exactly, by (distance, gallery index).
    """
    num_rows, num_g = block.shape
    num_bins = _NUM_BINS
    stride = num_bins + 3  # per row: bins 0..num_bins + 1 for items, num_bins + 2 for junk
    if match_rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        low = block.min(axis=1)
        if np.isnan(low).any():
            bad = int(np.nonzero(np.isnan(low))[0][0])
            raise DataError(f"distmat: NaN distance in query row {bad} of the current chunk")
        match_values = block[match_rows, match_cols]
        high = np.full(num_rows, -np.inf, dtype=block.dtype)
        np.maximum.at(high, match_rows, match_values)
        span = high - low
        usable = np.isfinite(span) & (span > 0)
        scale = np.where(usable, num_bins / np.where(usable, span, 1), 0).astype(block.dtype)
        low = np.where(np.isfinite(low), low, 0).astype(block.dtype)
        offsets = (np.arange(num_rows) * stride).astype(block.dtype)

        scaled = buffers["scaled"][: block.size].reshape(block.shape)
        np.subtract(block, low[:, None], out=scaled)
        np.multiply(scaled, scale[:, None], out=scaled)
        np.fmin(scaled, num_bins + 1, out=scaled)  # far beyond the last match: top bin
        if not usable.all():  # no finite spread (no match, +-inf, all equal): one exact group
            scaled[~usable] = 0
        bins = buffers["bins"][: block.size].reshape(block.shape)
        # offsets and bin edges are exact integers, so every row stays inside its own bin range
        np.add(scaled, offsets[:, None], out=bins, casting="unsafe")  # truncation == floor here
    bins[junk_rows, junk_cols] = junk_rows * stride + num_bins + 2
    flat_bins = bins.reshape(-1)

    histogram = np.bincount(flat_bins, minlength=num_rows * stride)
    below = np.cumsum(histogram.reshape(num_rows, stride), axis=1).reshape(-1) - histogram

    match_flat = match_rows.astype(np.int64) * num_g + match_cols
    match_bins = flat_bins[match_flat]
    shares_bin = np.zeros(num_rows * stride, dtype=bool)
    shares_bin[match_bins] = True
    tied_flat = np.flatnonzero(np.take(shares_bin, flat_bins))  # items sharing a bin with a match
    tied_bins = flat_bins[tied_flat]
    by_value = np.argsort(block.reshape(-1)[tied_flat], kind="stable")  # ties keep index order
    order = by_value[np.argsort(tied_bins[by_value], kind="stable")]  # bin, distance, index
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    group_start = np.searchsorted(tied_bins[order], match_bins, side="left")
    within = position[np.searchsorted(tied_flat, match_flat)] - group_start
    return below[match_bins] + within


# --------------------------------------------------------------------------- single-gallery-shot


def single_shot_uniforms(seed: int, query_index: int, num_repeats: int, num_ids: int) -> np.ndarray:
    """The uniform draws of the CUHK03 single-gallery-shot sampling for one query.

    Seeded per (seed, query index) so the result does not depend on chunking. Identity ``k`` (the
    ``k``-th smallest gallery pid) is represented in repeat ``r`` by its eligible gallery item number
    ``floor(u[r, k] * count)`` (ascending gallery index).
    """
    return np.random.default_rng([int(seed), int(query_index)]).random((num_repeats, num_ids))


def _single_shot_ranks(
    block: np.ndarray,
    first_row: int,
    rows: np.ndarray,
    slots: np.ndarray,
    match_start: np.ndarray,
    match_count: np.ndarray,
    match_cols: np.ndarray,
    groups: _GalleryGroups,
    num_repeats: int,
    seed: int,
) -> np.ndarray:
    """(valid rows x repeats) 0-based rank of the sampled match among one item per identity."""
    num_ids = len(groups.pids)
    uniforms = np.stack([single_shot_uniforms(seed, first_row + r, num_repeats, num_ids) for r in rows])
    picks = np.minimum(np.floor(uniforms * groups.counts).astype(np.int64), groups.counts - 1)
    chosen = groups.order[groups.starts + picks]  # (rows, repeats, ids)
    own = slots[rows]
    own_u = uniforms[np.arange(len(rows)), :, own]  # (rows, repeats)
    counts = match_count[rows][:, None]
    own_pick = np.minimum(np.floor(own_u * counts).astype(np.int64), counts - 1)
    match_item = match_cols[match_start[rows][:, None] + own_pick]
    row_values = block[rows]
    chosen_d = row_values[np.arange(len(rows))[:, None, None], chosen]
    match_d = row_values[np.arange(len(rows))[:, None], match_item][..., None]
    before = (chosen_d < match_d) | ((chosen_d == match_d) & (chosen < match_item[..., None]))
    before[np.arange(len(rows)), :, own] = False
    return before.sum(axis=2)


# --------------------------------------------------------------------------- TPR at FPR


def _allowed_false_accepts(fpr: float, num_negatives: int) -> int:
    return math.floor(round(fpr * num_negatives, 9))


class _SmallestKeeper:
    """Keeps the ``capacity`` smallest values seen so far (bounded memory)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.parts: list[np.ndarray] = []
        self.pending = 0

    def add(self, values: np.ndarray) -> None:
        if self.capacity == 0 or values.size == 0:
            return
        self.parts.append(values.astype(np.float64))
        self.pending += values.size
        if self.pending > max(2 * self.capacity, 1 << 22):
            self._shrink()

    def _shrink(self) -> None:
        merged = np.concatenate(self.parts)
        if merged.size > self.capacity:
            merged = np.partition(merged, self.capacity - 1)[: self.capacity]
        self.parts, self.pending = [merged], merged.size

    @property
    def values(self) -> np.ndarray:
        if not self.parts:
            return np.zeros(0, dtype=np.float64)
        self._shrink()
        return self.parts[0]


# --------------------------------------------------------------------------- accumulation


class _RankAccumulator:
    """Sums per-query AP/INP/CMC (and the optional extras) over tiles of query rows."""

    def __init__(
        self,
        groups: _GalleryGroups,
        g_camids: np.ndarray,
        max_rank: int,
        topk_ap: int | None,
        single_shot_repeats: int,
        seed: int,
        keeper: _SmallestKeeper | None,
    ) -> None:
        self.groups, self.g_camids = groups, g_camids
        self.max_rank, self.topk_ap = max_rank, topk_ap
        self.single_shot_repeats, self.seed = single_shot_repeats, seed
        self.keeper = keeper
        self.first_rank_counts = np.zeros(max_rank + 1, dtype=np.int64)
        self.single_shot_counts = np.zeros(max_rank + 1, dtype=np.float64)
        self.ap_sum = self.inp_sum = self.topk_sum = 0.0
        self.num_valid = 0
        self.positives: list[np.ndarray] = []
        self.buffers: dict[str, np.ndarray] = {}

    def _buffers_for(self, block: np.ndarray) -> dict[str, np.ndarray]:
        scaled = self.buffers.get("scaled")
        if scaled is None or scaled.size < block.size or scaled.dtype != block.dtype:
            self.buffers = {
                "scaled": np.empty(block.size, dtype=block.dtype),
                "bins": np.empty(block.size, dtype=np.int64),
            }
        return self.buffers

    def add(self, block: np.ndarray, first_row: int, q_pids: np.ndarray, q_camids: np.ndarray) -> None:
        """Account for query rows ``first_row .. first_row + len(block) - 1``."""
        block = np.ascontiguousarray(block)
        num_rows = block.shape[0]
        pair_rows, pair_cols = self.groups.same_pid_items(q_pids)
        is_junk = self.g_camids[pair_cols] == q_camids[pair_rows]
        match_rows, match_cols = pair_rows[~is_junk], pair_cols[~is_junk]
        ranks = _match_ranks(
            block, match_rows, match_cols, pair_rows[is_junk], pair_cols[is_junk], self._buffers_for(block)
        )
        if self.keeper is not None:
            negative = np.ones(block.shape, dtype=bool)
            negative[pair_rows, pair_cols] = False
            self.keeper.add(block[negative])
            self.positives.append(block[match_rows, match_cols].astype(np.float64))

        match_count = np.bincount(match_rows, minlength=num_rows)
        valid = np.nonzero(match_count)[0]
        if len(valid) == 0:
            return
        self.num_valid += len(valid)
        match_start = np.cumsum(match_count) - match_count  # matches are grouped by row already
        order = np.lexsort((ranks, match_rows))
        rows_sorted, ranks_sorted = match_rows[order], ranks[order]
        hit_number = np.arange(len(order)) - match_start[rows_sorted] + 1  # 1-based within the query
        precision = hit_number / (ranks_sorted + 1.0)
        counts = match_count[valid]
        self.ap_sum += float(
            (np.bincount(rows_sorted, weights=precision, minlength=num_rows)[valid] / counts).sum()
        )
        first = ranks_sorted[match_start[valid]]
        last = ranks_sorted[match_start[valid] + counts - 1]
        self.inp_sum += float((counts / (last + 1.0)).sum())
        self.first_rank_counts += np.bincount(np.minimum(first, self.max_rank), minlength=self.max_rank + 1)
        if self.topk_ap is not None:
            in_top = ranks_sorted < self.topk_ap
            truncated = np.bincount(rows_sorted, weights=precision * in_top, minlength=num_rows)[valid]
            self.topk_sum += float((truncated / np.minimum(counts, self.topk_ap)).sum())
        if self.single_shot_repeats:
            single = _single_shot_ranks(
                block,
                first_row,
                valid,
                self.groups.slot_of(q_pids),
                match_start,
                match_count,
                match_cols,
                self.groups,
                self.single_shot_repeats,
                self.seed,
            )
            self.single_shot_counts += (
                np.bincount(np.minimum(single, self.max_rank).ravel(), minlength=self.max_rank + 1)
                / self.single_shot_repeats
            )


# --------------------------------------------------------------------------- public entry point


def evaluate_rank(
    distmat: DistanceSource,
    q_pids: Sequence[int],
    g_pids: Sequence[int],
    q_camids: Sequence[int],
    g_camids: Sequence[int],
    max_rank: int = 50,
    *,
    topk_ap: int | None = None,
    cuhk03_single_gallery_shot: bool = False,
    seed: int = 0,
    chunk_size: int | None = None,
    tpr_fprs: Sequence[float] | None = None,
    num_repeats: int = 10,
) -> dict[str, Any]:
    """CMC, mAP, mINP (and optionally top-k AP, single-gallery-shot CMC, TPR@FPR) of a ranking.

    ``distmat``: query x gallery distances (float32 is fine; smaller = more similar) as a 2-D array,
    a callable ``(start, stop) -> rows`` or an iterable of row blocks in query order.
    ``chunk_size``: query rows fetched (sliced, or asked from the callable) at once (default: ~4M
    distances); the work itself runs on cache-sized tiles of rows, so memory stays bounded.

    Returns ``cmc`` (float array, length ``max_rank``; entries past the gallery size are 1),
    ``mAP``, ``mINP``, ``num_valid_queries``, ``num_skipped_queries``; ``mAP@k`` with ``topk_ap``;
    with ``cuhk03_single_gallery_shot`` the ``cmc`` is the single-gallery-shot one (``num_repeats``
    seeded draws of one gallery item per identity, averaged) and ``cmc_all_shot`` keeps the
    standard one, while mAP/mINP stay those of the standard protocol. ``tpr_at_fpr`` (with
    ``tpr_fprs``): every (query, gallery) pair except same-pid-same-camera pairs is pooled, a pair is
    *positive* when the pids are equal and *negative* otherwise, a pair is *accepted* when its
    distance is strictly below a threshold; for each target FPR the threshold is the largest one
    accepting at most ``floor(fpr * #negatives)`` negatives, and the TPR is the fraction of
    positives it accepts (no interpolation).
    """
    q_pids_a, g_pids_a = _as_labels(q_pids, "q_pids"), _as_labels(g_pids, "g_pids")
    q_cams_a, g_cams_a = _as_labels(q_camids, "q_camids"), _as_labels(g_camids, "g_camids")
    num_q, num_g = len(q_pids_a), len(g_pids_a)
    if len(q_cams_a) != num_q:
        raise DataError(f"q_camids: expected {num_q} entries (one per query), got {len(q_cams_a)}")
    if len(g_cams_a) != num_g:
        raise DataError(f"g_camids: expected {num_g} entries (one per gallery item), got {len(g_cams_a)}")
    if num_q == 0 or num_g == 0:
        raise DataError(f"evaluate_rank: need at least one query and one gallery item, got {num_q} x {num_g}")
    if int(max_rank) < 1:
        raise ConfigError(f"max_rank: expected >= 1, got {max_rank}")
    if topk_ap is not None and int(topk_ap) < 1:
        raise ConfigError(f"topk_ap: expected a positive rank cut-off, got {topk_ap}")
    fprs = [float(f) for f in tpr_fprs] if tpr_fprs is not None else []
    for fpr in fprs:
        if not 0.0 <= fpr <= 1.0:
            raise ConfigError(f"tpr_fprs: expected false-positive rates in [0, 1], got {fpr}")
    if cuhk03_single_gallery_shot and int(num_repeats) < 1:
        raise ConfigError(f"num_repeats: expected >= 1, got {num_repeats}")

    max_rank = int(max_rank)
    groups = _GalleryGroups.build(g_pids_a)
    keeper = None
    negatives_total = 0
    if fprs:
        slots = groups.slot_of(q_pids_a)
        same_pairs = int(np.where(slots >= 0, groups.counts[np.maximum(slots, 0)], 0).sum())
        negatives_total = num_q * num_g - same_pairs
        keep = max(_allowed_false_accepts(f, negatives_total) for f in fprs) + 1
        keeper = _SmallestKeeper(min(keep, negatives_total))
    acc = _RankAccumulator(
        groups,
        g_cams_a,
        max_rank,
        int(topk_ap) if topk_ap is not None else None,
        int(num_repeats) if cuhk03_single_gallery_shot else 0,
        int(seed),
        keeper,
    )

    tile_rows = max(1, min(_TILE_ELEMENTS // num_g, 8192))  # 8192 rows keep float32 bin ids exact
    for start, block in iter_distance_blocks(distmat, num_q, num_g, _rows_per_chunk(chunk_size, num_g)):
        for offset in range(0, block.shape[0], tile_rows):
            first = start + offset
            tile = block[offset : offset + tile_rows]
            stop = first + tile.shape[0]
            acc.add(tile, first, q_pids_a[first:stop], q_cams_a[first:stop])

    if acc.num_valid == 0:
        raise DataError(
            f"evaluate_rank: none of the {num_q} queries has a same-pid gallery item in "
            "another camera, so no metric is defined (check q_pids/g_pids/camids)"
        )
    valid = acc.num_valid
    result: dict[str, Any] = {
        "cmc": np.cumsum(acc.first_rank_counts[:max_rank]) / valid,
        "mAP": acc.ap_sum / valid,
        "mINP": acc.inp_sum / valid,
        "num_valid_queries": int(valid),
        "num_skipped_queries": int(num_q - valid),
    }
    if topk_ap is not None:
        result[f"mAP@{int(topk_ap)}"] = acc.topk_sum / valid
    if cuhk03_single_gallery_shot:
        result["cmc_all_shot"] = result["cmc"]
        result["cmc"] = np.cumsum(acc.single_shot_counts[:max_rank]) / valid
    if keeper is not None:
        result["tpr_at_fpr"] = _tpr_at_fprs(fprs, keeper, acc.positives, negatives_total)
    return result


def _tpr_at_fprs(
    fprs: list[float], keeper: _SmallestKeeper, positive_chunks: list[np.ndarray], negatives_total: int
) -> dict[float, float]:
    negatives = np.sort(keeper.values)
    positives = np.concatenate(positive_chunks) if positive_chunks else np.zeros(0)
    tpr = {}
    for fpr in fprs:
        allowed = _allowed_false_accepts(fpr, negatives_total)
        if allowed >= negatives_total:
            tpr[fpr] = 1.0
        elif positives.size == 0:
            tpr[fpr] = float("nan")
        else:
            tpr[fpr] = float(np.mean(positives < negatives[allowed]))
    return tpr
