"""The VisDA-2020 chain's report: what every step of the chain adds, measured on the target.

The chain (docs/visda.md; ``pipelines/visda/dvc.yaml`` and the Kubeflow ``visda`` pipeline) is: SDA
once -> per backbone, ``pretrain`` × 2 seeds on the raw sources (row ``raw``; also SDA's encoders) and
× 2 seeds on the translations (``SDA``) -> per backbone ``mmt`` in the original mode (``MMT``) and in
the runner-up's (``MMT+``), both from the two SDA nets -> a camera model on the target -> one ensemble
of the MMT+ nets. This module scores those models on the target's query/gallery and tabulates the
VisDA ablations (docs/methods/visda.md):

- raw vs SDA pretraining, per backbone (mean ± std over the two pretrain seeds);
- MMT vs MMT+, per backbone;
- every single member vs the ensemble, under the same post-processing;
- the ensemble's post-processing added one step at a time: flip, camera correction, re-ranking.

``reidflow visda-report`` is the pipeline's last stage; :func:`score_chain` is shared with the
evidence study (``reidflow visda-study``), which runs the chain per target style × seed.
Target labels are used for this evaluation only; every model is the last iterate, and ``best single``
is picked with the target labels (an oracle: the strictest baseline an ensemble can be held to).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import StrictModel, params_digest
from reidflow.errors import ConfigError, DataError
from reidflow.stages.evaluate import RerankConfig

log = logging.getLogger(__name__)

# The chain's roles: the input names of `reidflow visda-report` and the rows of the ablations.
ROLES = {"raw": "raw", "sda": "SDA", "mmt": "MMT", "mmt_plus": "MMT+"}
STEPS = ("no flip", "+ flip", "+ camera", "+ re-ranking")


class VisdaReportConfig(StrictModel):
    """How the chain's models are scored (``visda.report``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(128, ge=1)
    ensemble_of: Literal["raw", "sda", "mmt", "mmt_plus"] = Field(
        "mmt_plus", description="the role whose models form the ensemble (VisDA: the MMT+ nets)"
    )
    camera_lambda: float = Field(0.1, ge=0, description="d = d_reid - λ·d_cam (REFERENCE.md)")
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    max_rank: int = Field(50, ge=1)


class VisdaConfig(StrictModel):
    """The chain by configuration (params section ``visda``): backbones, the two seeds, the target."""

    backbones: list[str] = Field(min_length=1, description="one chain per backbone; the ensemble's members")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1], description="the two pretrain seeds per backbone (MMT's two nets)"
    )
    source: str = Field(description="the labelled source dataset (name in `datasets`; VisDA: PersonX)")
    target: str = Field(description="the unlabelled target dataset (name in `datasets`)")
    sda_encoder: str = Field(description="backbone whose raw seed-0 net is SDA's frozen encoders")
    report: VisdaReportConfig = Field(default_factory=VisdaReportConfig)

    @model_validator(mode="after")
    def _check(self) -> VisdaConfig:
        from reidflow.models.registry import list_backbones

        known = list_backbones()
        unknown = [b for b in self.backbones if b not in known]
        if unknown:
            raise ValueError(f"backbones: {unknown} are not registered backbones ({', '.join(known)})")
        if len(set(self.backbones)) != len(self.backbones):
            raise ValueError(f"backbones: {self.backbones} lists a backbone twice")
        if len(self.seeds) != 2 or self.seeds[0] == self.seeds[1]:
            raise ValueError(f"seeds: {self.seeds}; expected two different seeds (MMT adapts two nets)")
        if self.sda_encoder not in self.backbones:
            raise ValueError(f"sda_encoder: {self.sda_encoder!r} is not one of backbones {self.backbones}")
        if self.target == self.source:
            raise ValueError(f"target: {self.target!r} is also the source")
        return self


# ------------------------------------------------------------------------------------------ scoring


def _device(name: str) -> str:
    from reidflow.train.runtime import resolve_device

    return resolve_device(name).type


def model_info(model_dir: Path) -> dict[str, Any]:
    """Name, backbone and seed of a model artifact (model.json and lineage.json)."""
    from reidflow.store.artifacts import read_lineage

    meta = json.loads((Path(model_dir) / "model.json").read_text())
    return {
        "name": str(meta.get("name") or Path(model_dir).name),
        "backbone": str(meta["model"]["backbone"]),
        "seed": read_lineage(Path(model_dir)).get("seed"),
    }


def score_chain(
    roles: Mapping[str, Sequence[Path]],
    target: Path,
    cfg: VisdaReportConfig,
    camera: Path | None = None,
) -> dict[str, Any]:
    """Score every model of ``roles`` (role -> model artifact dirs) on ``target``'s query/gallery.

    Singles: flip-averaged features, plain distances. Ensemble (the ``cfg.ensemble_of`` models): the
    post-processing steps of :data:`STEPS` (``+ camera`` only with a ``camera`` model). ``best
    single``: the member with the highest plain mAP, also under the ensemble's full post-processing.
    All values are fractions.
    """
    from reidflow.eval.ensemble import concat_features
    from reidflow.eval.features import extract_with_meta
    from reidflow.eval.scoring import RerankParams, headline, score_variants
    from reidflow.models.artifact import load_model_artifact
    from reidflow.stages.study import query_gallery

    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ConfigError(f"visda: unknown roles {unknown}; expected some of {sorted(ROLES)}")
    if not roles.get(cfg.ensemble_of):
        raise ConfigError(
            f"visda.report.ensemble_of: {cfg.ensemble_of!r}, but no {cfg.ensemble_of} model given"
        )
    device = _device(cfg.device)
    qg = query_gallery(target, "visda")
    is_q = np.asarray(qg.splits) == "query"
    q_rows, g_rows = np.flatnonzero(is_q), np.flatnonzero(~is_q)
    pids, camids = np.asarray(qg.pids), np.asarray(qg.camids)
    rerank = RerankParams(cfg.rerank.k1, cfg.rerank.k2, cfg.rerank.lambda_value)

    def variants(feats: np.ndarray, with_rerank: bool, cam: tuple[np.ndarray, np.ndarray] | None) -> dict:
        res, _ = score_variants(
            feats[q_rows], feats[g_rows], pids[q_rows], pids[g_rows], camids[q_rows], camids[g_rows],
            max_rank=cfg.max_rank, rerank=rerank if with_rerank else None, cam=cam,
            camera_lambda=cfg.camera_lambda,
        )  # fmt: skip
        return {name: headline(r) for name, r in res.items()}

    def features(model_dir: Path, flips: Sequence[bool]) -> list[np.ndarray]:
        """Features with each flip setting of ``flips``, from one load of the model."""
        model, meta = load_model_artifact(Path(model_dir), device)
        return [
            extract_with_meta(model, meta, qg, batch_size=cfg.batch_size, flip=flip, device=device).features
            for flip in flips
        ]

    cam = None
    if camera is not None:
        [cam_feats] = features(camera, (True,))
        cam = (cam_feats[q_rows], cam_feats[g_rows])
    models: list[dict[str, Any]] = []
    member_feats: list[tuple[dict[str, Any], np.ndarray]] = []
    member_no_flip: list[np.ndarray] = []
    for role, dirs in roles.items():
        member = role == cfg.ensemble_of
        for model_dir in dirs:
            feats, *no_flip = features(Path(model_dir), (True, False) if member else (True,))
            row = {"role": role, **model_info(Path(model_dir)), **variants(feats, False, None)["plain"]}
            models.append(row)
            if member:
                member_feats.append((row, feats))
                member_no_flip += no_flip
    log.info("visda: scored %d models on %s", len(models), target)
    no_flip = concat_features(member_no_flip)
    ensemble = concat_features([feats for _, feats in member_feats])
    full = variants(ensemble, with_rerank=True, cam=cam)
    steps = [
        {"step": "no flip", **variants(no_flip, False, None)["plain"]},
        {"step": "+ flip", **full["plain"]},
    ]
    if cam is not None:
        steps.append({"step": "+ camera", **full["camera"]})
    steps.append({"step": "+ re-ranking", **full["camera+rerank" if cam is not None else "rerank"]})
    member_rows = [row for row, _ in member_feats]
    best, best_feats = max(member_feats, key=lambda pair: pair[0]["mAP"])
    best_full = variants(best_feats, with_rerank=True, cam=cam)
    return {
        "target": Path(target).name,
        "num_query": len(q_rows),
        "num_gallery": len(g_rows),
        "models": models,
        "ensemble": {"of": cfg.ensemble_of, "members": [m["name"] for m in member_rows], "steps": steps},
        "best_single": {
            "name": best["name"],
            "backbone": best["backbone"],
            "plain": {k: best[k] for k in ("mAP", "rank1", "mINP")},
            "post-processed": best_full["camera+rerank" if cam is not None else "rerank"],
        },
    }


def step_scores(scores: Mapping[str, Any], step: str) -> dict[str, Any]:
    """The ensemble's scores after post-processing ``step`` (one of :data:`STEPS`)."""
    for v in scores["ensemble"]["steps"]:
        if v["step"] == step:
            return v
    raise DataError(f"visda: the ensemble has no post-processing step {step!r}")


def role_stats(scores: Mapping[str, Any], role: str, metric: str = "mAP") -> dict[str, dict[str, float]]:
    """Per backbone (and ``all``): mean, std and count of ``metric`` (in %) over the role's models."""
    from reidflow.stages.study import mean_std

    rows = [m for m in scores["models"] if m["role"] == role]
    out: dict[str, dict[str, float]] = {}
    for backbone in dict.fromkeys(m["backbone"] for m in rows):
        values = [m[metric] for m in rows if m["backbone"] == backbone]
        out[backbone] = {**mean_std(values), "n": len(values)}
    if rows:
        out["all"] = {**mean_std([m[metric] for m in rows]), "n": len(rows)}
    return out


def _cell(stat: Mapping[str, float] | None) -> str:
    if stat is None:
        return "—"
    if stat["n"] > 1:
        return f"{stat['mean']:.1f} ± {stat['std']:.1f}"
    return f"{stat['mean']:.1f}"


def ablation_tables(scores: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The four VisDA ablations of one chain run, as report rows (values in %)."""
    stats = {role: role_stats(scores, role) for role in ROLES}
    backbones = list(dict.fromkeys(m["backbone"] for m in scores["models"]))

    def pair(a: str, b: str) -> list[dict[str, Any]]:
        rows = []
        for backbone in [*backbones, "all"]:
            sa, sb = stats[a].get(backbone), stats[b].get(backbone)
            if sa is None and sb is None:
                continue
            gap = f"{sb['mean'] - sa['mean']:+.1f}" if sa and sb else "—"
            rows.append({"backbone": backbone, f"{ROLES[a]} mAP %": _cell(sa), f"{ROLES[b]} mAP %": _cell(sb),
                         "gap": gap})  # fmt: skip
        return rows

    of = scores["ensemble"]["of"]
    singles = [
        {"model": m["name"], "mAP %": f"{100 * m['mAP']:.1f}", "rank-1 %": f"{100 * m['rank1']:.1f}"}
        for m in scores["models"]
        if m["role"] == of
    ]
    best = scores["best_single"]
    singles.append(
        {"model": f"best single ({best['name']})", "mAP %": f"{100 * best['plain']['mAP']:.1f}",
         "rank-1 %": f"{100 * best['plain']['rank1']:.1f}"}
    )  # fmt: skip
    flip = step_scores(scores, "+ flip")
    singles.append(
        {"model": f"ensemble of {len(scores['ensemble']['members'])}", "mAP %": f"{100 * flip['mAP']:.1f}",
         "rank-1 %": f"{100 * flip['rank1']:.1f}"}
    )  # fmt: skip
    steps = [
        {"post-processing": step, "mAP %": f"{100 * v['mAP']:.1f}", "rank-1 %": f"{100 * v['rank1']:.1f}",
         "mINP %": f"{100 * v['mINP']:.1f}"}
        for v in scores["ensemble"]["steps"]
        for step in [v["step"]]
    ]  # fmt: skip
    return {
        "raw vs SDA pretraining": pair("raw", "sda"),
        "MMT vs MMT+": pair("mmt", "mmt_plus"),
        "singles vs ensemble": singles,
        "post-processing": steps,
    }


# ------------------------------------------------------------------------------------------- report


def _plot(scores: Mapping[str, Any], out: Path) -> Path:
    """Bars: the mean target mAP of every role, the best single and each ensemble step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, errors = [], [], []
    for role, row in ROLES.items():
        stat = role_stats(scores, role).get("all")
        if stat:
            labels.append(row)
            values.append(stat["mean"])
            errors.append(stat["std"])
    labels.append("best single")
    values.append(100 * scores["best_single"]["plain"]["mAP"])
    errors.append(0.0)
    for v in scores["ensemble"]["steps"]:
        labels.append(f"ensemble {v['step']}")
        values.append(100 * v["mAP"])
        errors.append(0.0)
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    ax.bar(
        range(len(values)),
        values,
        yerr=errors,
        capsize=3,
        color=[f"C{min(i, 9)}" for i in range(len(values))],
    )
    ax.set_xticks(range(len(values)), labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(f"{scores['target']} mAP % (mean ± std over models)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def run(
    cfg: VisdaConfig,
    roles: Mapping[str, Sequence[str]],
    target: str,
    output: str | Path,
    camera: str | None = None,
    ctx: Any = None,
) -> Path:
    """``reidflow visda-report``: score the chain's models (role -> URIs) and write the report artifact."""
    from reidflow.eval.report import ReportSection, write_report
    from reidflow.store.artifacts import open_input, write_artifact

    missing = [r for r in ROLES if not roles.get(r)]
    if missing:
        raise ConfigError(
            f"visda-report: no --input {missing[0]}=URI; the chain's report needs models of every role "
            f"({', '.join(f'{r} ({label})' for r, label in ROLES.items())})"
        )
    inputs = {
        role: [open_input(f"{role}{i}", uri) for i, uri in enumerate(uris)] for role, uris in roles.items()
    }
    target_in = open_input("target", target)
    camera_in = open_input("camera", camera) if camera else None
    scores = score_chain(
        {role: [a.path for a in arts] for role, arts in inputs.items()},
        target_in.path,
        cfg.report,
        camera_in.path if camera_in else None,
    )
    resolved = cfg.model_dump(mode="json")
    tables = ablation_tables(scores)
    all_inputs = [a for arts in inputs.values() for a in arts] + [
        target_in,
        *([camera_in] if camera_in else []),
    ]
    with write_artifact(
        output,
        kind="report",
        stage="visda_report",
        params=resolved,
        params_digest=params_digest(resolved),
        seed=None,
        inputs=all_inputs,
        ctx=ctx,
    ) as art:
        (art.path / "figures").mkdir()
        plot = _plot(scores, art.path / "figures" / "ablations.png")
        sections = [ReportSection(title, table=rows) for title, rows in tables.items()]
        sections[0].notes.append(
            "Each pretrain cell is the mean ± std over the backbone's two pretrain seeds; `gap` is the second "
            "column minus the first."
        )
        sections[2].notes.append(
            "Same post-processing for every row: flip-averaged features, no camera correction, no re-ranking. "
            "`best single` is picked with the target labels (an oracle)."
        )
        sections.append(
            ReportSection("Target mAP per step", images=[("the chain's steps, target mAP", plot)])
        )
        write_report(
            art.path,
            "reidflow VisDA chain report",
            f"Target {scores['target']} ({scores['num_query']} queries, {scores['num_gallery']} gallery images); "
            f"backbones {', '.join(cfg.backbones)}; ensemble of the {ROLES[cfg.report.ensemble_of]} nets; "
            f"re-ranking k1={cfg.report.rerank.k1}, k2={cfg.report.rerank.k2}, λ={cfg.report.rerank.lambda_value}; "
            f"camera λ={cfg.report.camera_lambda}. Values in %.",
            sections,
        )
        art.metrics = {"scores": scores, "ablations": {r: role_stats(scores, r) for r in ROLES}}
    return Path(str(output))
