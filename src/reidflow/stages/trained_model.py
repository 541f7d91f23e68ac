"""What every training stage (pretrain, metabin) does around its method: checkpoint location, the
quick same-/cross-domain evaluation, the training curve and the model artifact itself."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from reidflow.config import StrictModel
from reidflow.data.index import ShardIndex
from reidflow.data.transforms import TransformConfig
from reidflow.train.engine import EngineConfig


class QuickEvalConfig(StrictModel):
    enabled: bool = True
    batch_size: int = Field(128, ge=1)


def device_name(engine: EngineConfig) -> str:
    import torch

    if engine.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return engine.device


def checkpoint_dir(configured: str | None, output: str | Path) -> Path:
    """``configured`` if set; else ``<output>.ckpt`` beside a local output, or a temp dir for S3."""
    if configured:
        return Path(configured)
    out = str(output)
    if out.startswith("s3://"):
        return Path(tempfile.gettempdir()) / "reidflow-ckpt" / out[5:].replace("/", "_")
    path = Path(out)
    return path.with_name(path.name + ".ckpt")


def save_training_curve(
    directory: Path, history: list[dict[str, Any]], losses: Sequence[str], lr_key: str
) -> None:
    """``training_curve.json`` (the DVC plot) and ``training_curve.png`` of ``losses`` and the lr."""
    from reidflow.eval.plots import training_curve

    keep = ("iteration", "epoch", *losses, "acc", lr_key)
    rows = [{k: h[k] for k in keep if k in h} for h in history]
    (directory / "training_curve.json").write_text(json.dumps(rows) + "\n")
    curve = [
        {
            "iteration": r["iteration"],
            **{k: r[k] for k in losses if k in r},
            "lr": r.get(lr_key, float("nan")),
        }
        for r in rows
    ]
    training_curve(curve, directory / "training_curve.png", "training losses")


def final_losses(history: list[dict[str, Any]], keys: Sequence[str], window: int = 20) -> dict[str, float]:
    """Mean of each of ``keys`` over the last ``window`` logged iterations."""
    tail = history[-window:]
    present = [k for k in keys if tail and k in tail[-1]]
    return {k: round(float(np.mean([h[k] for h in tail])), 4) for k in present}


def quick_eval(
    model: Any,
    source_dirs: Sequence[Path],
    target_dirs: Sequence[Path],
    tcfg: TransformConfig,
    batch_size: int,
    device: str,
) -> dict[str, Any]:
    """mAP / rank-1 on the query/gallery split of every source (same-domain) and target (cross-domain)."""
    from reidflow.eval.features import extract
    from reidflow.eval.scoring import headline, score_variants

    sets = [(d, "same_domain") for d in source_dirs] + [(d, "cross_domain") for d in target_dirs]
    per_dataset: dict[str, Any] = {}
    groups: dict[str, list[float]] = {"same_domain": [], "cross_domain": []}
    for ddir, group in sets:
        index = ShardIndex.load(ddir)
        if not {"query", "gallery"} <= set(index.splits):
            continue
        qg = index.filter(split=["query", "gallery"])
        feats = extract(
            model,
            qg,
            height=tcfg.height,
            width=tcfg.width,
            batch_size=batch_size,
            device=device,
            mean=tcfg.mean,
            std=tcfg.std,
        )
        is_q = np.asarray(qg.splits) == "query"
        q, g = feats.take(np.flatnonzero(is_q)), feats.take(np.flatnonzero(~is_q))
        variants, _ = score_variants(
            q.features, g.features, q.pids, g.pids, q.camids, g.camids, max_rank=20, rerank=None
        )
        per_dataset[ddir.name] = {**headline(variants["plain"]), "group": group}
        groups[group].append(per_dataset[ddir.name]["mAP"])
    summary = {f"{g}_mAP": round(float(np.mean(v)), 4) for g, v in groups.items() if v}
    return {"datasets": per_dataset, **summary}
