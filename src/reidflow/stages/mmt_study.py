"""The MMT+ evidence study: does adapting to the unlabelled target beat direct transfer, and MMT+ beat MMT?

One command (``reidflow mmt-study``, params section ``mmt_study``) runs it with the real stages:

1. ``synth`` generates the study's own domains (the sources, the hand-written target styles and
   ``drawn.count`` target styles drawn at random); ``shard`` shards each of them;
2. per target and seed: two ``pretrain`` runs on the labelled sources (net seeds ``2·seed`` and
   ``2·seed + 1``, BN adapted to the target's unlabelled train split: row ``direct transfer``, the
   mean of the two nets), then one ``mmt`` run per variant from those two nets (rows ``MMT``,
   ``MMT+`` and any further variant of ``variants``);
3. every model is evaluated on the target's query/gallery (no re-ranking, no flip). Target labels are
   used there and in the pseudo-label purity / NMI / ARI curves only, never in training; every model is
   the last iterate (no model selection).

Each step's artifact is kept under ``workdir``; a rerun keeps those made from the same params and the
same upstream artifacts (a killed study resumes where it stopped). ``only_targets`` restricts a run to
some targets (to split the study over processes) and then writes no report.
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
    TARGET_METRICS,
    StudyDomains,
    bar_plot,
    check_claims,
    claim_lines,
    prepare_domains,
    reuse_or_run,
    rows_markdown,
    select_targets,
    summarize_rows,
    target_scores,
    two_net_configs,
    write_study_report,
)
from reidflow.store.lineage import RunContext, now_iso

DIRECT = "direct transfer"
METRICS = TARGET_METRICS


class MMTStudyConfig(StudyDomains):
    pretrain: dict[str, Any] = Field(default_factory=dict, description="`pretrain` recipe of both nets")
    mmt: dict[str, Any] = Field(default_factory=dict, description="`mmt` recipe shared by every variant")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"MMT": {"method": {"mode": "mmt"}}, "MMT+": {"method": {"mode": "mmt+"}}},
        description="table rows after 'direct transfer': name -> overrides of the mmt recipe",
    )

    @model_validator(mode="after")
    def _check(self) -> MMTStudyConfig:
        if DIRECT in self.variants:
            raise ValueError(f"variants: {DIRECT!r} is the pretrained nets' row, not an mmt variant")
        if not self.variants:
            raise ValueError("variants: at least one mmt variant is needed")
        stage_configs(self, self.seeds[0])
        return self

    @property
    def rows(self) -> list[str]:
        return [DIRECT, *self.variants]


def stage_configs(cfg: MMTStudyConfig, seed: int) -> dict[str, Any]:
    """The validated configs at study seed ``seed``: ``net1``/``net2`` (:func:`two_net_configs`) and
    one ``mmt`` config per variant."""
    from reidflow.stages.mmt import MMTStageConfig

    configs = two_net_configs(cfg.pretrain, seed, cfg.device, "mmt_study.pretrain")
    for name, overrides in cfg.variants.items():
        fixed = {"seed": seed, "engine": {"device": cfg.device, "seed": seed}, "export": "mean1"}
        merged = deep_merge(deep_merge(cfg.mmt, overrides), fixed)
        configs[name] = validate_as(MMTStageConfig, merged, f"mmt_study.variants.{name}")
    return configs


def run(
    cfg: MMTStudyConfig,
    workdir: str | Path,
    output: str | Path | None = None,
    ctx: RunContext | None = None,
    command: str | None = None,
    table: str | Path | None = None,
    only_targets: Sequence[str] | None = None,
) -> Path | None:
    """Run (or resume) the study under ``workdir``; write the report artifact to ``output`` (default
    ``workdir/report``) and, when given, the Markdown (+ plots) to ``table``. With ``only_targets``
    train those targets only and write no report (returns None)."""
    started = now_iso()
    work = Path(workdir)
    targets = select_targets(cfg, only_targets, "mmt-study")
    shards = prepare_domains(cfg.effective_synth(), [*cfg.sources, *targets], work, ctx)
    sources = [shards[s] for s in cfg.sources]
    runs: dict[str, Any] = {}
    for seed in cfg.seeds:  # seed-major: a partial study already holds every target
        for target in targets:
            paths = _train_one(cfg, work / "runs" / target, seed, sources, shards[target], ctx)
            runs[f"{target}-seed{seed}"] = {
                "target": target,
                "seed": seed,
                "paths": {k: str(v) for k, v in paths.items()},
                "scores": _score_one(cfg, paths, shards[target]),
                "pseudo_labels": {
                    v: json.loads((paths[v] / "pseudo_labels.json").read_text()) for v in cfg.variants
                },
            }
    if only_targets:
        return None
    return _write_report(
        cfg, runs, shards, Path(output) if output else work / "report", ctx, started, command, table
    )


def _train_one(
    cfg: MMTStudyConfig, work: Path, seed: int, sources: list[Path], target: Path, ctx: RunContext | None
) -> dict[str, Path]:
    """pretrain × 2 -> one mmt run per variant, for one target and seed."""
    from reidflow.stages import mmt as mmt_stage
    from reidflow.stages import pretrain as pretrain_stage

    configs = stage_configs(cfg, seed)
    src = [str(s) for s in sources]
    where = f"{target.name} seed {seed}"
    paths: dict[str, Path] = {}
    for net in ("net1", "net2"):
        pcfg = configs[net]
        out = work / f"{net}-seed{seed}"
        reuse_or_run(
            "mmt-study",
            f"{where}: pretrain {net}",
            out,
            params_digest(pcfg.model_dump(mode="json")),
            [*sources, target],
            lambda p=pcfg, o=out: pretrain_stage.run(p, src, str(target), o, ctx),
        )
        paths[net] = out
    nets = [str(paths["net1"]), str(paths["net2"])]
    for name in cfg.variants:
        mcfg = configs[name]
        out = work / f"{_slug(name)}-seed{seed}"
        upstream = [paths["net1"], paths["net2"], *(sources if mcfg.method.use_source else []), target]
        reuse_or_run(
            "mmt-study",
            f"{where}: {name}",
            out,
            params_digest(mcfg.model_dump(mode="json")),
            upstream,
            lambda m=mcfg, o=out: mmt_stage.run(
                m, nets, src if m.method.use_source else [], str(target), o, ctx
            ),
        )
        paths[name] = out
    return paths


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.replace("+", "plus"))


def _score_one(cfg: MMTStudyConfig, paths: Mapping[str, Path], target: Path) -> dict[str, dict[str, float]]:
    """Per row: target rank-1 and mAP (fractions); ``direct transfer`` is the mean of the two nets."""
    from reidflow.train.runtime import resolve_device

    device = resolve_device(cfg.device).type

    def scores(model: Path) -> dict[str, float]:
        s = target_scores(model, target, device, cfg.batch_size)
        return {"target_rank-1": s["rank-1"], "target_mAP": s["mAP"]}

    nets = [scores(paths["net1"]), scores(paths["net2"])]
    out = {DIRECT: {m: float(np.mean([n[m] for n in nets])) for m in METRICS}}
    out.update({name: scores(paths[name]) for name in cfg.variants})
    return out


# ------------------------------------------------------------------------------------------- report


def summarize(cfg: MMTStudyConfig, runs: Mapping[str, Any]) -> dict[str, Any]:
    """Per row: mean ± std over seeds (in %) per target, and of the per-seed average over targets."""
    return summarize_rows(cfg, runs, cfg.rows)


def claim_check(cfg: MMTStudyConfig, table: Mapping[str, Any]) -> dict[str, Any]:
    """Target mAP: MMT+ against direct transfer and against MMT (and every further variant against
    MMT+), beaten by more than the larger seed std of the two rows, on average and on each target."""
    pairs = [("MMT+", DIRECT), ("MMT+", "MMT")]
    pairs += [(row, "MMT+") for row in cfg.variants if row not in ("MMT", "MMT+")]
    return check_claims(cfg, table, pairs)


def markdown_tables(cfg: MMTStudyConfig, table: Mapping[str, Any]) -> str:
    """Rows by method; per target mAP, then the average rank-1 and (last column) the average mAP."""
    return rows_markdown(cfg, {row: table[row] for row in cfg.rows}, "Method")


def purity_curves(cfg: MMTStudyConfig, runs: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per variant and target: the pseudo-label purity of each epoch, mean over seeds (%)."""
    curves: dict[str, dict[str, list[float]]] = {}
    for variant in cfg.variants:
        curves[variant] = {}
        for target in cfg.all_targets:
            histories = [r["pseudo_labels"][variant] for r in runs.values() if r["target"] == target]
            epochs = min(len(h) for h in histories)
            curves[variant][target] = [
                float(100 * np.mean([h[e].get("purity", np.nan) for h in histories])) for e in range(epochs)
            ]
    return curves


def results_markdown(
    cfg: MMTStudyConfig,
    table: Mapping[str, Any],
    claims: Mapping[str, Any],
    curves: Mapping[str, Any],
    command: str | None,
    images: Mapping[str, str],
) -> str:
    lines = cfg.header_lines(
        "MMT+ evidence study (synthetic sources -> unlabelled synthetic targets)", "labelled"
    )
    lines += [
        (
            f"`{DIRECT}`: the two pretrained nets (BN adapted to the target's unlabelled train split), the "
            "mean of their scores. Every other row adapts those two nets with `reidflow mmt`: `MMT` is the "
            "original method (target only, linear head, soft triplet), `MMT+` the VisDA-2020 runner-up's "
            "(source + target, DSBN, MoCo, ArcFace). Query/gallery of the target, no re-ranking; the target "
            "labels are used for this evaluation and the purity curves only."
        ),
        "",
        markdown_tables(cfg, table),
        f"![target mAP per row and target]({images['plot']})",
        "",
        "## Claims (target mAP, beaten by more than the seed std)",
        "",
    ]
    lines += claim_lines(claims)
    lines += [
        "",
        "## Pseudo-label purity per epoch (mean over seeds, %)",
        "",
        f"![pseudo-label purity]({images['purity']})",
        "",
    ]
    for variant, per_target in curves.items():
        for target, curve in per_target.items():
            lines.append(f"- {variant}, {target}: " + ", ".join(f"{v:.1f}" for v in curve))
    lines += [
        "",
        "## Recipes",
        "",
        "pretrain: `" + json.dumps(cfg.pretrain, sort_keys=True) + "`  ",
        "mmt: `" + json.dumps(cfg.mmt, sort_keys=True) + "`  ",
        "variants: `" + json.dumps(cfg.variants, sort_keys=True) + "`",
    ]
    if command:
        lines += ["", "## Reproduce", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def _plot(cfg: MMTStudyConfig, table: Mapping[str, Any], out: Path) -> None:
    def cell(row: str, scope: str) -> Mapping[str, float]:
        return (table[row]["average"] if scope == "average" else table[row]["targets"][scope])["target_mAP"]

    bar_plot(cfg.rows, [*cfg.all_targets, "average"], cell, "target mAP % (mean ± std over seeds)", out)


def _plot_purity(cfg: MMTStudyConfig, curves: Mapping[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    styles = ["-", "--", ":", "-."]
    for i, (variant, per_target) in enumerate(curves.items()):
        for j, (target, curve) in enumerate(per_target.items()):
            ax.plot(
                range(len(curve)),
                curve,
                styles[j % len(styles)],
                color=f"C{i}",
                marker="o",
                markersize=3,
                label=f"{variant} · {target}",
            )
    ax.set_xlabel("epoch (re-clustering)")
    ax.set_ylabel("pseudo-label purity % (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _write_report(
    cfg: MMTStudyConfig,
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
    claims = claim_check(cfg, table)
    curves = purity_curves(cfg, runs)
    inputs = [
        open_input(f"{key}:{part}", path) for key, r in runs.items() for part, path in r["paths"].items()
    ]
    inputs += [open_input(f"shards:{name}", str(path)) for name, path in shards.items()]
    return write_study_report(
        stage="mmt_study",
        cfg=cfg,
        output=output,
        inputs=inputs,
        ctx=ctx,
        started=started,
        images={
            "plot": ("mmt_study.png", lambda path: _plot(cfg, table, path)),
            "purity": ("mmt_study_purity.png", lambda path: _plot_purity(cfg, curves, path)),
        },
        results={"table": table, "claims": claims, "purity": curves},
        runs=runs,
        metrics={"table": table, "claims": claims},
        markdown=lambda names: results_markdown(cfg, table, claims, curves, command, names),
        table_path=table_path,
    )
