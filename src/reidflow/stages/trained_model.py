"""What every training stage (pretrain, metabin) does around its method: checkpoint location, the
quick same-/cross-domain evaluation, the training curve and the model artifact itself."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from reidflow.config import StrictModel, params_digest
from reidflow.data.index import ShardIndex
from reidflow.data.transforms import TransformConfig
from reidflow.train.engine import EngineConfig


class QuickEvalConfig(StrictModel):
    enabled: bool = True
    batch_size: int = Field(128, ge=1)


def device_name(engine: EngineConfig) -> str:
    """``cpu`` or ``cuda``: where the engine will train."""
    from reidflow.train.runtime import resolve_device

    return resolve_device(engine.device).type


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
    return {k: round(float(np.mean([h[k] for h in tail if k in h])), 4) for k in present}


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


@dataclass
class TrainedModel:
    """A finished training run, ready to be written as a model artifact."""

    model: Any
    model_cfg: Any  # reidflow.models.reid_model.ModelConfig
    transforms: TransformConfig
    result: Any  # reidflow.train.engine.TrainResult
    device: str
    extra: dict[str, Any] = field(default_factory=dict)  # goes into model.json


def write_trained_model(
    output: str | Path,
    run: TrainedModel,
    *,
    stage: str,
    cfg: StrictModel,
    seed: int,
    inputs: Sequence[Any],
    ctx: Any,
    started: str,
    losses: Sequence[str],
    lr_key: str,
    more_metrics: Callable[[Path], dict[str, Any]] | None = None,
) -> None:
    """The model artifact of a training stage: weights + model.json, the training curve and
    ``metrics.json`` (training summary, plus whatever ``more_metrics(artifact_dir)`` adds and writes)."""
    from reidflow.models.artifact import save_model_artifact
    from reidflow.store.artifacts import write_artifact

    resolved = cfg.model_dump(mode="json")
    tcfg = run.transforms
    with write_artifact(
        output,
        kind="model",
        stage=stage,
        params=resolved,
        params_digest=params_digest(resolved),
        seed=seed,
        inputs=list(inputs),
        ctx=ctx,
        started=started,
    ) as art:
        art.device = run.device
        save_model_artifact(
            art.path, run.model, run.model_cfg, height=tcfg.height, width=tcfg.width, mean=tcfg.mean,
            std=tcfg.std, extra=run.extra,
        )  # fmt: skip
        save_training_curve(art.path, run.result.history, losses, lr_key)
        metrics: dict[str, Any] = {
            "train": {
                "iterations": run.result.final_iteration,
                "images_per_s": round(run.result.samples_per_s, 2),
                "wall_time_s": round(run.result.wall_time_s, 1),
                "final": final_losses(run.result.history, (*losses, "acc")),
            }
        }
        if more_metrics is not None:
            metrics.update(more_metrics(art.path))
        art.metrics = metrics
