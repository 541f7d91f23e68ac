"""The dataset card: what a sharded dataset contains, as JSON (for machines) and Markdown (for people).

Colour statistics are accumulated while the shard writer validates each image, from the pixels it
already decoded (:class:`ColourStats`), so the card costs no second decode pass.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reidflow.data.sample import SPLITS

CARD_SCHEMA = "reidflow.dataset_card/1"
CARD_JSON = "dataset_card.json"
CARD_MD = "dataset_card.md"
SIZE_HISTOGRAM_TOP = 50
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R BT.601 brightness


class _Moments:
    """Running per-pixel sums for mean/std of R, G, B, brightness and saturation (all in [0, 1])."""

    CHANNELS = ("r", "g", "b", "brightness", "saturation")

    def __init__(self) -> None:
        self.count = 0
        self.images = 0
        self.total = np.zeros(5, dtype=np.float64)
        self.total_sq = np.zeros(5, dtype=np.float64)

    def add(self, total: np.ndarray, total_sq: np.ndarray, count: int) -> None:
        self.total += total
        self.total_sq += total_sq
        self.count += count
        self.images += 1

    def summary(self) -> dict[str, Any]:
        mean = self.total / max(self.count, 1)
        var = np.maximum(self.total_sq / max(self.count, 1) - mean**2, 0.0)
        std = np.sqrt(var)
        out: dict[str, Any] = {"images": self.images}
        for i, name in enumerate(self.CHANNELS):
            out[name] = {"mean": round(float(mean[i]), 6), "std": round(float(std[i]), 6)}
        return out


class ColourStats:
    """Colour statistics per domain and per (domain, camera), fed with decoded RGB images."""

    def __init__(self) -> None:
        self.by_domain: dict[str, _Moments] = defaultdict(_Moments)
        self.by_camera: dict[tuple[str, int], _Moments] = defaultdict(_Moments)

    def add(self, domain: str, camid: int, rgb: np.ndarray) -> None:
        """Add one ``H x W x 3`` uint8 image."""
        pixels = rgb.reshape(-1, 3).astype(np.float32) / 255.0
        high = pixels.max(axis=1)
        low = pixels.min(axis=1)
        saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0)
        brightness = pixels @ _LUMA.astype(np.float32)
        values = np.column_stack([pixels, brightness, saturation]).astype(np.float64)
        total = values.sum(axis=0)
        total_sq = np.square(values).sum(axis=0)
        self.by_domain[domain].add(total, total_sq, len(values))
        self.by_camera[(domain, camid)].add(total, total_sq, len(values))

    def summary(self) -> dict[str, Any]:
        return {
            "definition": "per-pixel mean/std in [0,1]; brightness = BT.601 luma; saturation = HSV S",
            "by_domain": {d: m.summary() for d, m in sorted(self.by_domain.items())},
            "by_camera": {f"{d}/c{c}": m.summary() for (d, c), m in sorted(self.by_camera.items())},
        }


def _split_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    per_id = Counter((r["domain"], r["pid"]) for r in rows)
    per_cam = Counter(f"{r['domain']}/c{r['camid']}" for r in rows)
    counts = np.array(sorted(per_id.values())) if per_id else np.zeros(0, dtype=int)
    return {
        "images": len(rows),
        "identities": len(per_id),
        "cameras": len(per_cam),
        "images_per_identity": {
            "min": int(counts.min()) if len(counts) else 0,
            "median": float(np.median(counts)) if len(counts) else 0.0,
            "max": int(counts.max()) if len(counts) else 0,
        },
        "images_per_camera": dict(sorted(per_cam.items())),
    }


def build_card(
    dataset: str,
    rows: Sequence[Mapping[str, Any]],
    shards: Sequence[Mapping[str, Any]],
    colour: ColourStats,
    skipped: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    """The card as a JSON-able dict from the index rows the writer produced.

    ``shards``: dicts with ``path``, ``bytes``, ``sha256``, ``samples``.
    ``skipped``: dicts with ``source`` and ``reason``.
    """
    by_split: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    sizes = Counter(f"{r['width']}x{r['height']}" for r in rows)
    top = sizes.most_common(SIZE_HISTOGRAM_TOP)
    other = sum(sizes.values()) - sum(n for _, n in top)
    size_histogram = dict(top)
    if other:
        size_histogram["other"] = other
    return {
        "schema": CARD_SCHEMA,
        "dataset": dataset,
        "images": len(rows),
        "domains": sorted({r["domain"] for r in rows}),
        "splits": {s: _split_stats(by_split[s]) for s in SPLITS if s in by_split},
        "image_size_histogram": size_histogram,
        "colour": colour.summary(),
        "converted": [
            {"key": r["key"], "source": r["source"], "from": r["converted_from"]}
            for r in rows
            if r["converted_from"]
        ],
        "skipped": [dict(s) for s in skipped],
        "shards": [dict(s) for s in shards],
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """A human-readable rendering of :func:`build_card`'s output."""
    lines = [f"# Dataset card: {card['dataset']}", ""]
    lines += [f"- images: {card['images']}", f"- domains: {', '.join(card['domains']) or '-'}", ""]
    lines += ["## Splits", "", "| split | images | identities | cameras | img/id min | median | max |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for split, s in card["splits"].items():
        ipi = s["images_per_identity"]
        lines.append(
            f"| {split} | {s['images']} | {s['identities']} | {s['cameras']} | "
            f"{ipi['min']} | {ipi['median']:g} | {ipi['max']} |"
        )
    lines += ["", "## Images per camera", "", "| split | camera | images |", "|---|---|---|"]
    for split, s in card["splits"].items():
        for cam, n in s["images_per_camera"].items():
            lines.append(f"| {split} | {cam} | {n} |")
    lines += ["", "## Image sizes (w x h)", "", "| size | images |", "|---|---|"]
    lines += [f"| {size} | {n} |" for size, n in card["image_size_histogram"].items()]
    lines += ["", "## Colour", "", card["colour"]["definition"], ""]
    lines += ["| group | images | R | G | B | brightness | saturation |", "|---|---|---|---|---|---|---|"]
    groups = list(card["colour"]["by_domain"].items()) + list(card["colour"]["by_camera"].items())
    for name, m in groups:
        cells = " | ".join(f"{m[c]['mean']:.3f} ± {m[c]['std']:.3f}" for c in _Moments.CHANNELS)
        lines.append(f"| {name} | {m['images']} | {cells} |")
    lines += ["", f"## Converted to JPEG ({len(card['converted'])})", ""]
    lines += [f"- {c['source']} (from {c['from']})" for c in card["converted"]] or ["none"]
    lines += ["", f"## Skipped ({len(card['skipped'])})", ""]
    lines += [f"- {s['source']}: {s['reason']}" for s in card["skipped"]] or ["none"]
    lines += ["", "## Shards", "", "| shard | samples | bytes | sha256 |", "|---|---|---|---|"]
    lines += [f"| {s['path']} | {s['samples']} | {s['bytes']} | {s['sha256']} |" for s in card["shards"]]
    return "\n".join(lines) + "\n"


def write_card(card: Mapping[str, Any], dataset_dir: Path) -> tuple[Path, Path]:
    """Write ``dataset_card.json`` and ``dataset_card.md`` into ``dataset_dir``."""
    json_path = Path(dataset_dir) / CARD_JSON
    md_path = Path(dataset_dir) / CARD_MD
    json_path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md_path.write_text(card_markdown(card), encoding="utf-8")
    return json_path, md_path
