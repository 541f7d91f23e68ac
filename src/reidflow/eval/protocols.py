"""Evaluation protocols: one query/gallery evaluation, seeded multi-split small-target protocols.

Small DG targets are evaluated over random splits (mean and std over 10 by default), each split
recorded as plain indices so it can be saved with the artifact and replayed:

* ``viper``: 316 of the 632 ids; query = their camera-A image, gallery = their camera-B image.
* ``prid``: 100 of the 200 ids seen by both cameras; query = camera A, gallery = camera B images of
  those 100 plus every camera-B id never seen by camera A (549 distractors): 649.
* ``grid``: 125 of the 250 paired ids; query = their probe image, gallery = their gallery image
  plus every gallery image without a probe (775 distractors): 900.
* ``ilids``: half of the 119 ids (60, the half left after the 59 training ids), one random image
  pair per id: one query and one gallery image (from two cameras when the id has two).

Sides: for viper/prid the query side is camid 0 and the gallery side camid 1; for grid it is the
sample's split (``query`` = probe folder, ``gallery`` = gallery folder). When a dataset is smaller
than the published one the number of test ids scales to ``ceil(paired ids / 2)`` (which is also
how the published numbers come about). Query and gallery images are evaluated as two views
(camid 0 and 1), so the standard same-id-same-camera removal never drops the true match.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reidflow.data.sample import Sample
from reidflow.errors import ConfigError, DataError
from reidflow.eval.metrics import evaluate_rank

PROTOCOL_QUERY_IDS = {"viper": 316, "prid": 100, "grid": 125, "ilids": 60}
SUMMARY_RANKS = (1, 5, 10, 20)


@dataclass(frozen=True)
class Split:
    """One recorded query/gallery split; indices point into the dataset's sample list."""

    protocol: str
    index: int
    seed: int
    query: list[int]
    gallery: list[int]
    query_pids: list[int]
    gallery_pids: list[int]
    query_camids: list[int]
    gallery_camids: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        missing = [f for f in cls.__dataclass_fields__ if f not in data]
        if missing:
            raise DataError(f"split record: missing keys {missing}")
        split = cls(**{f: data[f] for f in cls.__dataclass_fields__})
        if len(split.query) != len(split.query_pids) or len(split.gallery) != len(split.gallery_pids):
            raise DataError(
                f"split record {split.protocol}#{split.index}: index and pid lists differ in length"
            )
        return split


# --------------------------------------------------------------------------- single evaluation


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready metrics from :func:`evaluate_rank` output: floats, lists, ``rank-k`` keys."""
    cmc = np.asarray(result["cmc"], dtype=float)
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key in ("cmc", "cmc_all_shot"):
            out[key] = [float(v) for v in np.asarray(value)]
        elif key == "tpr_at_fpr":
            out[key] = {f"{fpr:g}": float(tpr) for fpr, tpr in value.items()}
        elif isinstance(value, (int, np.integer)):
            out[key] = int(value)
        else:
            out[key] = float(value)
    for k in SUMMARY_RANKS:
        if k <= len(cmc):
            out[f"rank-{k}"] = float(cmc[k - 1])
    return out


def standard(
    distmat: Any,
    q_pids: Sequence[int],
    g_pids: Sequence[int],
    q_camids: Sequence[int],
    g_camids: Sequence[int],
    **options: Any,
) -> dict[str, Any]:
    """One query/gallery evaluation (standard protocol), summarized for ``metrics.json``."""
    return summarize(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, **options))


# --------------------------------------------------------------------------- splits


def _split_arrays(samples_or_arrays: Any, protocol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(pids, camids, sides) where side 0 = query view, 1 = gallery view, None = any two images."""
    if isinstance(samples_or_arrays, Mapping):
        for key in ("pids", "camids"):
            if key not in samples_or_arrays:
                raise DataError(
                    f"multi_split: arrays mapping needs key {key!r}, got {sorted(samples_or_arrays)}"
                )
        pids = np.asarray(samples_or_arrays["pids"], dtype=np.int64)
        camids = np.asarray(samples_or_arrays["camids"], dtype=np.int64)
        sides = samples_or_arrays.get("sides")
        sides = None if sides is None else np.asarray(sides, dtype=np.int64)
    else:
        samples = list(samples_or_arrays)
        if samples and not all(isinstance(s, Sample) for s in samples):
            raise DataError("multi_split: expected a list of Sample or a mapping with pids/camids[/sides]")
        pids = np.array([s.pid for s in samples], dtype=np.int64)
        camids = np.array([s.camid for s in samples], dtype=np.int64)
        sides = None
        if protocol == "grid":
            sides = np.array([0 if s.split == "query" else 1 for s in samples], dtype=np.int64)
    if len(pids) != len(camids) or (sides is not None and len(sides) != len(pids)):
        raise DataError("multi_split: pids, camids (and sides) must have one entry per sample")
    if sides is None and protocol in ("viper", "prid"):
        if camids.size and not np.isin(camids, (0, 1)).all():
            raise DataError(
                f"multi_split({protocol!r}): expected camids 0 (camera A) and 1 (camera B), "
                f"found {sorted(set(camids.tolist()))}"
            )
        sides = camids.copy()
    if protocol == "grid" and sides is None:
        raise DataError(
            "multi_split('grid'): needs sides (probe = 0, gallery = 1): pass Samples with "
            "split query/gallery or a mapping with 'sides'"
        )
    if sides is not None and sides.size and not np.isin(sides, (0, 1)).all():
        raise DataError("multi_split: sides must be 0 (query view) or 1 (gallery view)")
    return pids, camids, sides


def random_id_split(
    pids: Sequence[int],
    camids: Sequence[int],
    num_query_ids: int,
    *,
    sides: Sequence[int] | None = None,
    seed: int = 0,
    index: int = 0,
    protocol: str = "random_id",
) -> Split:
    """Pick ``num_query_ids`` ids at random; one query and one gallery image each (+ distractors).

    With ``sides`` (0 = query view, 1 = gallery view) the candidates are ids with images on both
    sides; the query image comes from side 0, the gallery image from side 1, and every side-1
    image of an id without side-0 images joins the gallery as a distractor. Without ``sides`` the
    candidates are ids with at least two images and the pair is drawn from two cameras when the
    id has two. The draw is seeded by ``(seed, index)``.
    """
    pids_a, cams_a = np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64)
    sides_a = None if sides is None else np.asarray(sides, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(index)])
    by_id: dict[int, list[int]] = {}
    for i, pid in enumerate(pids_a.tolist()):
        by_id.setdefault(pid, []).append(i)
    if sides_a is not None:
        candidates = sorted(
            p for p, idx in by_id.items() if (sides_a[idx] == 0).any() and (sides_a[idx] == 1).any()
        )
    else:
        candidates = sorted(p for p, idx in by_id.items() if len(idx) >= 2)
    if int(num_query_ids) < 1 or int(num_query_ids) > len(candidates):
        raise ConfigError(
            f"num_query_ids: expected 1..{len(candidates)} (ids usable as queries), got {num_query_ids}"
        )
    chosen = sorted(rng.choice(candidates, size=int(num_query_ids), replace=False).tolist())
    query, gallery = [], []
    for pid in chosen:
        idx = np.array(by_id[pid])
        if sides_a is not None:
            query.append(int(rng.choice(idx[sides_a[idx] == 0])))
            gallery.append(int(rng.choice(idx[sides_a[idx] == 1])))
            continue
        first = int(rng.choice(idx))
        others = idx[(idx != first) & (cams_a[idx] != cams_a[first])]
        if others.size == 0:
            others = idx[idx != first]
        query.append(first)
        gallery.append(int(rng.choice(others)))
    if sides_a is not None:
        distractors = [
            i
            for p, idx in sorted(by_id.items())
            if not (sides_a[idx] == 0).any()
            for i in idx
            if sides_a[i] == 1
        ]
        gallery.extend(distractors)
    return Split(
        protocol=protocol,
        index=int(index),
        seed=int(seed),
        query=query,
        gallery=gallery,
        query_pids=pids_a[query].tolist(),
        gallery_pids=pids_a[gallery].tolist(),
        query_camids=[0] * len(query),
        gallery_camids=[1] * len(gallery),
    )


def multi_split(samples_or_arrays: Any, protocol: str, num_splits: int = 10, seed: int = 0) -> list[Split]:
    """Seeded, recorded splits of a small target for ``viper``, ``prid``, ``grid`` or ``ilids``.

    ``samples_or_arrays``: the dataset's samples (list of :class:`Sample`) or a mapping with
    ``pids``, ``camids`` and optionally ``sides``. Split ``i`` is drawn with seed ``(seed, i)``.
    """
    if protocol not in PROTOCOL_QUERY_IDS:
        raise ConfigError(f"protocol: expected one of {sorted(PROTOCOL_QUERY_IDS)}, got {protocol!r}")
    if int(num_splits) < 1:
        raise ConfigError(f"num_splits: expected >= 1, got {num_splits}")
    pids, camids, sides = _split_arrays(samples_or_arrays, protocol)
    if sides is not None:
        paired = set(pids[sides == 0].tolist()) & set(pids[sides == 1].tolist())
    else:
        unique, counts = np.unique(pids, return_counts=True)
        paired = set(unique[counts >= 2].tolist())
    if len(paired) < 2:
        raise DataError(
            f"multi_split({protocol!r}): need at least 2 ids with a query and a gallery "
            f"image, found {len(paired)}"
        )
    num_query_ids = min(PROTOCOL_QUERY_IDS[protocol], math.ceil(len(paired) / 2))
    return [
        random_id_split(pids, camids, num_query_ids, sides=sides, seed=seed, index=i, protocol=protocol)
        for i in range(int(num_splits))
    ]


# --------------------------------------------------------------------------- aggregation


def _scalar_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float, np.floating, np.integer)) and not k.startswith("num_")
    }


def evaluate_splits(
    distfn: Callable[[list[int], list[int]], Any], splits: Sequence[Split], **options: Any
) -> dict[str, Any]:
    """Evaluate every split; ``distfn(query_indices, gallery_indices)`` returns their distances.

    Returns ``{"mean": {...}, "std": {...}, "splits": [per-split summary with its record]}``; std is
    the population standard deviation (ddof 0) over splits.
    """
    if not splits:
        raise ConfigError("evaluate_splits: expected at least one split")
    per_split = []
    for split in splits:
        summary = standard(
            distfn(list(split.query), list(split.gallery)),
            split.query_pids,
            split.gallery_pids,
            split.query_camids,
            split.gallery_camids,
            **options,
        )
        per_split.append({"split": split.to_dict(), "metrics": summary})
    scalars = [_scalar_metrics(s["metrics"]) for s in per_split]
    keys = [k for k in scalars[0] if all(k in s for s in scalars)]
    return {
        "mean": {k: float(np.mean([s[k] for s in scalars])) for k in keys},
        "std": {k: float(np.std([s[k] for s in scalars])) for k in keys},
        "splits": per_split,
    }


def average_over_targets(results_by_target: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Average each metric over targets (each a split result's ``mean`` or a plain summary)."""
    if not results_by_target:
        raise ConfigError("average_over_targets: expected at least one target")
    per_target = {
        name: _scalar_metrics(result.get("mean", result)) for name, result in results_by_target.items()
    }
    keys = [k for k in next(iter(per_target.values())) if all(k in m for m in per_target.values())]
    return {
        "mean": {k: float(np.mean([m[k] for m in per_target.values()])) for k in keys},
        "targets": per_target,
    }
