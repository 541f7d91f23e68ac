"""What a training stage writes around its method: checkpoint location, the quick same-/cross-domain
evaluation, the training curve and the re-ID model artifact itself (the loop around the method is
:mod:`reidflow.stages.training`)."""

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
    every_epochs: int | None = Field(
        None, ge=1, description="also evaluate every N epochs while training (metrics.json: eval_history)"
    )


def device_name(engine: EngineConfig) -> str:
    """``cpu`` or ``cuda``: where the engine will train."""
    from reidflow.train.runtime import resolve_device

    return resolve_device(engine.device).type


def checkpoint_dir(configured: str | None, output: str | Path) -> Path:
    """``configured`` if set; else ``<output>.ckpt`` beside a local output, or a temp dir for S3."""
    if configured:
        return Path(configured)
    from reidflow.store.scrub import scrub_text
    from reidflow.store.uri import parse_uri

    out = parse_uri(output).raw  # refuses credentials in the URI; scrub_text: nothing secret in a dir name
    if out.startswith("s3://"):
        return Path(tempfile.gettempdir()) / "reidflow-ckpt" / scrub_text(out[5:]).replace("/", "_")
    path = Path(out)
    return path.with_name(path.name + ".ckpt")


def save_training_curve(
    directory: Path, history: list[dict[str, Any]], losses: Sequence[str], lr_key: str
) -> None:
    """``training_curve.json`` (the DVC plot) and ``training_curve.png`` of ``losses`` and the lr.

    DVC's plots need every row of a file to have the same keys, so a term that a method reports on some
    iterations only (MetaBIN's meta losses, absent during its warm-up) goes to
    ``training_curve_partial.json``: one row per iteration that has it, with every such term.
    """
    from reidflow.eval.plots import training_curve

    keep = ("iteration", "epoch", *losses, "acc", lr_key)
    rows = [{k: h[k] for k in keep if k in h} for h in history]
    common = [k for k in keep if rows and all(k in r for r in rows)]
    partial = [k for k in keep if k not in common and any(k in r for r in rows)]
    (directory / "training_curve.json").write_text(
        json.dumps([{k: r[k] for k in common} for r in rows]) + "\n"
    )
    if partial:
        sparse = [
            {"iteration": r["iteration"], **{k: r[k] for k in partial}}
            for r in rows
            if all(k in r for k in partial)
        ]
        (directory / "training_curve_partial.json").write_text(json.dumps(sparse) + "\n")
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
    """Mean of each of ``keys`` over the last ``window`` logged iterations that report it (a method may
    report a term only on some iterations, e.g. MetaBIN's meta losses after its warm-up)."""
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
    eval_history: Sequence[dict[str, Any]] = (),
) -> None:
    """The model artifact of a training stage: weights + model.json, the training curve and
    ``metrics.json`` (training summary, the periodic ``eval_history`` if any, plus whatever
    ``more_metrics(artifact_dir)`` adds and writes)."""
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
        art.timing = {
            "images_per_s": round(run.result.samples_per_s, 2),
            "wall_time_s": round(run.result.wall_time_s, 1),
        }
        metrics: dict[str, Any] = {
            "train": {
                "iterations": run.result.final_iteration,
                "final": final_losses(run.result.history, (*losses, "acc")),
            }
        }
        if eval_history:
            metrics["eval_history"] = list(eval_history)
        if more_metrics is not None:
            metrics.update(more_metrics(art.path))
        art.metrics = metrics
