"""The VisDA chain's evidence study: the chain per target style × seed, and its ablations over seeds.

One command (``reidflow visda-study``, params section ``visda_study``) runs the chain of
``pipelines/visda`` with the real stages, per target and study seed ``s``:

1. per backbone, ``pretrain`` × 2 on the raw source (net seeds ``2s`` and ``2s + 1``, BN adapted to the
   target's unlabelled train split; row ``raw pretraining``);
2. ``sda train`` (the raw ``2s`` net of ``sda_encoder`` as both frozen encoders), ``sda translate``;
3. per backbone, ``pretrain`` × 2 on the translations (row ``SDA pretraining``);
4. per backbone, ``mmt`` in the original mode and in MMT+ mode from the two SDA nets (rows ``MMT``,
   ``MMT+``);
5. a camera model on the target's unlabelled train split;
6. :func:`reidflow.stages.visda.score_chain` on the target's query/gallery: singles, ``best single``
   (the MMT+ net with the best target mAP: an oracle), the ensemble of the MMT+ nets and its
   post-processing steps.

Target labels are used in step 6 only; every model is the last iterate. The same recipe and budget
serve every target, hand-written or drawn at random. Runs are kept under ``workdir`` and reused when
their params and upstream artifacts are unchanged; ``only_targets`` splits the study over processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import deep_merge, params_digest, validate_as
from reidflow.stages.study import (
    StudyDomains,
    bar_plot,
    check_claims,
    claim_lines,
    mean_std,
    pm,
    prepare_domains,
    reuse_or_run,
    rows_markdown,
    select_targets,
    summarize_rows,
    two_net_configs,
    write_study_report,
)
from reidflow.stages.visda import ROLES, VisdaReportConfig, score_chain, step_scores
from reidflow.store.lineage import RunContext, now_iso

ROWS = (
    "raw pretraining",
    "SDA pretraining",
    "MMT",
    "MMT+",
    "best single (MMT+)",
    "ensemble",
    "ensemble + camera",
    "ensemble + camera + re-ranking",
)
ROLE_ROWS = {"raw": "raw pretraining", "sda": "SDA pretraining", "mmt": "MMT", "mmt_plus": "MMT+"}
STEP_ROWS = {
    "+ flip": "ensemble",
    "+ camera": "ensemble + camera",
    "+ re-ranking": "ensemble + camera + re-ranking",
}
CLAIMS = (("ensemble", "best single (MMT+)"), ("SDA pretraining", "raw pretraining"), ("MMT+", "MMT"))


class VisdaStudyConfig(StudyDomains):
    backbones: list[str] = Field(min_length=2, description="the ensemble's members, one chain each")
    sda_encoder: str = Field(description="backbone whose raw net is SDA's frozen encoders")
    pretrain: dict[str, Any] = Field(default_factory=dict, description="`pretrain` recipe, raw and SDA alike")
    sda: dict[str, Any] = Field(default_factory=dict, description="`sda` recipe")
    mmt: dict[str, Any] = Field(default_factory=dict, description="`mmt` recipe, MMT and MMT+ alike")
    camera: dict[str, Any] = Field(default_factory=dict, description="the camera model's `pretrain` recipe")
    report: VisdaReportConfig = Field(default_factory=VisdaReportConfig)

    @model_validator(mode="after")
    def _check(self) -> VisdaStudyConfig:
        if len(self.sources) != 1:
            raise ValueError(f"sources: {self.sources}; the VisDA chain has one labelled source")
        if self.sda_encoder not in self.backbones:
            raise ValueError(f"sda_encoder: {self.sda_encoder!r} is not one of backbones {self.backbones}")
        if self.report.ensemble_of != "mmt_plus":
            raise ValueError(
                "report.ensemble_of: the study's rows are the ensemble of the MMT+ nets (mmt_plus)"
            )
        stage_configs(self, self.seeds[0], self.backbones[0])
        return self


def stage_configs(cfg: VisdaStudyConfig, seed: int, backbone: str) -> dict[str, Any]:
    """Validated configs at study seed ``seed`` for ``backbone``: ``net1``/``net2`` (pretrain seeds 2s,
    2s + 1, BN adapted to the target), ``sda``, ``mmt``/``mmt_plus`` and ``camera``."""
    from reidflow.stages.mmt import MMTStageConfig
    from reidflow.stages.pretrain import PretrainConfig
    from reidflow.stages.sda import SDAConfig

    configs = two_net_configs(cfg.pretrain, seed, cfg.device, "visda_study.pretrain", backbone)
    fixed = {"seed": seed, "engine": {"device": cfg.device, "seed": seed}}
    configs["sda"] = validate_as(SDAConfig, deep_merge(cfg.sda, fixed), "visda_study.sda")
    for role, mode in (("mmt", "mmt"), ("mmt_plus", "mmt+")):
        merged = deep_merge(cfg.mmt, {**fixed, "export": "mean1", "method": {"mode": mode}})
        configs[role] = validate_as(MMTStageConfig, merged, f"visda_study.mmt ({mode})")
    camera = deep_merge(cfg.camera, {**fixed, "labels": "camera", "eval": {"enabled": False}})
    configs["camera"] = validate_as(PretrainConfig, camera, "visda_study.camera")
    return configs


def run(
    cfg: VisdaStudyConfig,
    workdir: str | Path,
    output: str | Path | None = None,
    ctx: RunContext | None = None,
    command: str | None = None,
    table: str | Path | None = None,
    only_targets: Sequence[str] | None = None,
) -> Path | None:
    """Run (or resume) the study under ``workdir``; write the report artifact (default
    ``workdir/report``) and, when given, the Markdown (+ plot) to ``table``. With ``only_targets``
    train those targets only and write no report (returns None)."""
    started = now_iso()
    work = Path(workdir)
    targets = select_targets(cfg, only_targets, "visda-study")
    shards = prepare_domains(cfg.effective_synth(), [*cfg.sources, *targets], work, ctx)
    source = shards[cfg.sources[0]]
    runs: dict[str, Any] = {}
    for seed in cfg.seeds:  # seed-major: a partial study already holds every target
        for target in targets:
            roles, camera = _chain(cfg, work / "runs" / target, seed, source, shards[target], ctx)
            scores = score_chain(roles, shards[target], cfg.report, camera)
            runs[f"{target}-seed{seed}"] = {
                "target": target,
                "seed": seed,
                "paths": [str(p) for p in [*(p for ps in roles.values() for p in ps), camera]],
                "chain": scores,
                "scores": row_scores(scores),
            }
    if only_targets:
        return None
    return _write_report(
        cfg, runs, shards, Path(output) if output else work / "report", ctx, started, command, table
    )


def _chain(
    cfg: VisdaStudyConfig, work: Path, seed: int, source: Path, target: Path, ctx: RunContext | None
) -> tuple[dict[str, list[Path]], Path]:
    """The chain for one target and seed: every model by role, and the camera model."""
    from reidflow.stages import mmt as mmt_stage
    from reidflow.stages import pretrain as pretrain_stage
    from reidflow.stages import sda as sda_stage

    where = f"{target.name} seed {seed}"
    roles: dict[str, list[Path]] = {role: [] for role in ROLES}

    def pretrain(backbone: str, kind: str, data: Path) -> list[Path]:
        configs = stage_configs(cfg, seed, backbone)
        nets = []
        for net in ("net1", "net2"):
            pcfg = configs[net]
            out = work / f"{kind}-{backbone}-{net}-seed{seed}"
            reuse_or_run(
                "visda-study", f"{where}: {kind} pretrain {backbone} {net}", out,
                params_digest(pcfg.model_dump(mode="json")), [data, target],
                lambda p=pcfg, o=out: pretrain_stage.run(p, [str(data)], str(target), o, ctx),
            )  # fmt: skip
            nets.append(out)
        return nets

    for backbone in cfg.backbones:
        roles["raw"] += pretrain(backbone, "raw", source)
    encoder = work / f"raw-{cfg.sda_encoder}-net1-seed{seed}"
    scfg = stage_configs(cfg, seed, cfg.sda_encoder)["sda"]
    dump = scfg.model_dump(mode="json")
    gen, translated = work / f"sda-generator-seed{seed}", work / f"sda-translated-seed{seed}"
    reuse_or_run(
        "visda-study", f"{where}: sda train", gen, params_digest({"mode": "train", **dump}),
        [source, target, encoder],
        lambda: sda_stage.train(scfg, [str(source)], str(target), gen, str(encoder), str(encoder), ctx),
    )  # fmt: skip
    reuse_or_run(
        "visda-study", f"{where}: sda translate", translated, params_digest({"mode": "translate", **dump}),
        [gen, source], lambda: sda_stage.translate(scfg, str(gen), [str(source)], translated, ctx),
    )  # fmt: skip
    for backbone in cfg.backbones:
        nets = pretrain(backbone, "sda", translated)
        roles["sda"] += nets
        configs = stage_configs(cfg, seed, backbone)
        for role in ("mmt", "mmt_plus"):
            mcfg = configs[role].model_copy(update={"name": f"{backbone}-{role.replace('_', '-')}"})
            out = work / f"{role}-{backbone}-seed{seed}"
            upstream = [*nets, *([source] if mcfg.method.use_source else []), target]
            reuse_or_run(
                "visda-study", f"{where}: {role} {backbone}", out, params_digest(mcfg.model_dump(mode="json")),
                upstream,
                lambda m=mcfg, o=out, pair=[str(n) for n in nets]: mmt_stage.run(
                    m, pair, [str(source)] if m.method.use_source else [], str(target), o, ctx
                ),
            )  # fmt: skip
            roles[role].append(out)
    ccfg = stage_configs(cfg, seed, cfg.backbones[0])["camera"]
    camera = work / f"camera-seed{seed}"
    reuse_or_run(
        "visda-study", f"{where}: camera model", camera, params_digest(ccfg.model_dump(mode="json")), [target],
        lambda: pretrain_stage.run(ccfg, [str(target)], None, camera, ctx),
    )  # fmt: skip
    return roles, camera


def row_scores(chain: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """One chain's table rows (fractions): role rows are the mean over the role's models."""
    out: dict[str, dict[str, float]] = {}
    for role, row in ROLE_ROWS.items():
        models = [m for m in chain["models"] if m["role"] == role]
        out[row] = {
            "target_mAP": float(np.mean([m["mAP"] for m in models])),
            "target_rank-1": float(np.mean([m["rank1"] for m in models])),
        }
    best = chain["best_single"]["plain"]
    out["best single (MMT+)"] = {"target_mAP": best["mAP"], "target_rank-1": best["rank1"]}
    for step, row in STEP_ROWS.items():
        if any(s["step"] == step for s in chain["ensemble"]["steps"]):
            v = step_scores(chain, step)
            out[row] = {"target_mAP": v["mAP"], "target_rank-1": v["rank1"]}
    return out


# ------------------------------------------------------------------------------------------- report


def summarize(cfg: VisdaStudyConfig, runs: Mapping[str, Any]) -> dict[str, Any]:
    """Per row present in every run: mean ± std over seeds (in %) per target, and of the per-seed
    average over targets."""
    return summarize_rows(cfg, runs, [r for r in ROWS if all(r in run["scores"] for run in runs.values())])


def per_backbone(cfg: VisdaStudyConfig, runs: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per backbone and role: target mAP (%) mean ± std over seeds of the per-seed mean over targets."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for backbone in cfg.backbones:
        out[backbone] = {}
        for role, row in ROLE_ROWS.items():
            per_seed = []
            for seed in cfg.seeds:
                values = [
                    m["mAP"]
                    for r in runs.values()
                    if r["seed"] == seed
                    for m in r["chain"]["models"]
                    if m["role"] == role and m["backbone"] == backbone
                ]
                per_seed.append(float(np.mean(values)))
            out[backbone][row] = mean_std(per_seed)
    return out


def claim_check(cfg: VisdaStudyConfig, table: Mapping[str, Any]) -> dict[str, Any]:
    """Target mAP: each claim's row beats its rival by more than the larger seed std of the two, on
    the average over targets and on each target."""
    return check_claims(cfg, table, CLAIMS)


def markdown_tables(cfg: VisdaStudyConfig, table: Mapping[str, Any], backbones: Mapping[str, Any]) -> str:
    lines = [rows_markdown(cfg, table, "Row").rstrip("\n")]
    lines += ["", "Per backbone (target mAP %, average over targets, mean ± std over seeds):", ""]
    cols = list(ROLE_ROWS.values())
    lines += ["| Backbone | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for backbone, per_row in backbones.items():
        lines.append("| " + " | ".join([backbone, *(pm(per_row[c]) for c in cols)]) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(
    cfg: VisdaStudyConfig,
    table: Mapping[str, Any],
    backbones: Mapping[str, Any],
    claims: Mapping[str, Any],
    command: str | None,
    plot: str,
) -> str:
    lines = cfg.header_lines(
        "VisDA chain evidence study (one synthetic source -> unlabelled synthetic targets)", "labelled"
    )
    lines += [
        (
            f"Backbones: {', '.join(cfg.backbones)} (SDA's encoders: {cfg.sda_encoder}). Per target and seed the "
            "whole chain runs: raw pretraining × 2 seeds per backbone, SDA, pretraining on the translations × 2 "
            "seeds, MMT and MMT+ from the two SDA nets, a camera model, one ensemble of the MMT+ nets. Role rows "
            "are the mean over the role's models (backbones and nets); `best single` is the MMT+ net with the best "
            "target mAP, picked with the target labels (an oracle: the strictest baseline for the ensemble); "
            "`ensemble` uses the same post-processing as the singles (flip, no camera correction, no re-ranking), "
            "the next two rows add camera correction and k-reciprocal re-ranking. The target labels are used for "
            "this evaluation only."
        ),
        "",
        markdown_tables(cfg, table, backbones),
        f"![target mAP per row and target]({plot})",
        "",
        "## Claims (target mAP, beaten by more than the seed std)",
        "",
    ]
    lines += claim_lines(claims)
    lines += ["", "## Recipes", ""]
    for key in ("pretrain", "sda", "mmt", "camera"):
        lines.append(f"{key}: `" + json.dumps(getattr(cfg, key), sort_keys=True) + "`  ")
    lines.append("report: `" + json.dumps(cfg.report.model_dump(mode="json"), sort_keys=True) + "`")
    if command:
        lines += ["", "## Reproduce", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def _write_report(
    cfg: VisdaStudyConfig,
    runs: Mapping[str, Any],
    shards: Mapping[str, Path],
    output: Path,
    ctx: RunContext | None,
    started: str,
    command: str | None,
    table_path: str | Path | None,
) -> Path:
    from reidflow.store.artifacts import open_input

    table = summarize(cfg, runs)
    backbones = per_backbone(cfg, runs)
    claims = claim_check(cfg, table)
    inputs = [open_input(f"{key}:{i}", path) for key, r in runs.items() for i, path in enumerate(r["paths"])]
    inputs += [open_input(f"shards:{name}", str(path)) for name, path in shards.items()]

    def cell(row: str, scope: str) -> Mapping[str, float]:
        return (table[row]["average"] if scope == "average" else table[row]["targets"][scope])["target_mAP"]

    def plot(path: Path) -> None:
        bar_plot(
            list(table), [*cfg.all_targets, "average"], cell, "target mAP % (mean ± std over seeds)", path
        )

    return write_study_report(
        stage="visda_study",
        cfg=cfg,
        output=output,
        inputs=inputs,
        ctx=ctx,
        started=started,
        images={"plot": ("visda_study.png", plot)},
        results={"table": table, "per_backbone": backbones, "claims": claims},
        runs=runs,
        metrics={"table": table, "per_backbone": backbones, "claims": claims},
        markdown=lambda names: results_markdown(cfg, table, backbones, claims, command, names["plot"]),
        table_path=table_path,
    )
