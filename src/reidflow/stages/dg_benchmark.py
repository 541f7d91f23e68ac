"""The domain-generalization benchmark: normalization ablations on synthetic multi-source data.

One command (``reidflow dg-benchmark``) runs the whole study with the real stages:

1. ``synth`` generates the benchmark's own domains; ``shard`` shards each of them;
2. every variant (BN, IN, IBN, BIN, MetaBIN, SNR, ...) is trained once per seed on *all* source
   domains with one shared recipe: ``pretrain`` for the plain norms, ``metabin`` for MetaBIN;
3. every model is evaluated on every unseen target domain over the same seeded random splits
   (``protocol``, e.g. ``ilids``: one query and one gallery image for half the ids), and averaged
   over the targets (MetaBIN's Table 5 protocol). Two groups of targets are averaged separately:
   the hand-written ``targets`` and ``drawn.count`` targets drawn at random from a wide style
   distribution (:mod:`reidflow.data.synth.style_draw`), which nobody can have tuned on;
4. the table (mean ± std over seeds), per-target numbers, the splits and a plot go into one report
   artifact whose lineage lists every trained model and target shard.

Each step's artifact is kept under ``workdir``; a rerun skips the ones already made from the same
params (a killed study resumes where it stopped).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import StrictModel, deep_merge, params_digest, validate_as
from reidflow.data.synth.style_draw import DrawnDomains
from reidflow.stages.synth import SynthConfig, with_drawn
from reidflow.store.artifacts import is_current
from reidflow.store.lineage import RunContext, now_iso

log = logging.getLogger(__name__)

TRAINING_STAGES = ("pretrain", "metabin")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class Variant(StrictModel):
    """One row of the table: the stage that trains it and its settings on top of the recipe.

    An ablation row names the row it ablates (``ablates``) and what it changes (``change``); the
    report lists its difference to that row instead of ranking it with the methods.
    """

    stage: Literal["pretrain", "metabin"] = "pretrain"
    overrides: dict[str, Any] = Field(default_factory=dict, description="merged into the recipe")
    ablates: str | None = Field(None, description="the variant this row is an ablation of")
    change: str = Field("", description="what this ablation changes, in words, for the report")


class DGBenchmarkConfig(StrictModel):
    synth: SynthConfig
    sources: list[str] = Field(min_length=1, description="synth domain names trained on")
    targets: list[str] = Field(min_length=1, description="unseen hand-written synth domains evaluated")
    drawn: DrawnDomains = Field(
        default_factory=DrawnDomains, description="unseen targets drawn at random from a style distribution"
    )
    protocol: Literal["viper", "prid", "grid", "ilids"] = "ilids"
    num_splits: int = Field(10, ge=1)
    split_seed: int = 0
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    recipe: dict[str, Any] = Field(
        default_factory=dict, description="training settings shared by every variant"
    )
    variants: dict[str, Variant] = Field(min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DGBenchmarkConfig:
        from reidflow.stages.synth import resolve_domains

        names = [spec.name for spec in resolve_domains(self.effective_synth())]
        for key in ("sources", "targets"):
            missing = [n for n in getattr(self, key) if n not in names]
            if missing:
                raise ValueError(f"{key}: {missing} are not synth domains (synth.domains: {names})")
        overlap = set(self.sources) & set(self.all_targets)
        if overlap:
            raise ValueError(f"sources and targets overlap in {sorted(overlap)}; targets must be unseen")
        for name, variant in self.variants.items():
            if not SAFE_NAME.match(name):
                raise ValueError(f"variants.{name}: names are used in paths; expected {SAFE_NAME.pattern}")
            if variant.ablates is not None and variant.ablates not in self.variants:
                raise ValueError(f"variants.{name}.ablates: {variant.ablates!r} is not a variant")
            variant_config(self, name, seed=self.seeds[0])  # every variant validates up front
        return self

    @property
    def all_targets(self) -> list[str]:
        return [*self.targets, *self.drawn.names()]

    def effective_synth(self) -> SynthConfig:
        """The synth config that generates the benchmark's domains: the listed ones plus the drawn."""
        return with_drawn(self.synth, self.drawn)

    def target_groups(self) -> dict[str, list[str]]:
        """Targets averaged together in the report: the hand-written and the drawn ones."""
        groups = {"hand-written": list(self.targets)}
        if self.drawn.count:
            groups["drawn"] = self.drawn.names()
        return groups

    def ranked_variants(self) -> list[str]:
        return [n for n, v in self.variants.items() if v.ablates is None]


def variant_config(cfg: DGBenchmarkConfig, name: str, seed: int) -> Any:
    """The validated stage config of variant ``name`` at ``seed`` (recipe ⊕ overrides ⊕ seed)."""
    from reidflow.stages.metabin import MetabinConfig
    from reidflow.stages.pretrain import PretrainConfig

    variant = cfg.variants[name]
    data = deep_merge(deep_merge(cfg.recipe, variant.overrides), {"seed": seed, "eval": {"enabled": False}})
    data.setdefault("name", name)
    model_type = MetabinConfig if variant.stage == "metabin" else PretrainConfig
    return validate_as(model_type, data, f"dg_benchmark.variants.{name} (recipe + overrides)")


def run(
    cfg: DGBenchmarkConfig,
    workdir: str | Path,
    output: str | Path | None = None,
    ctx: RunContext | None = None,
    command: str | None = None,
    table: str | Path | None = None,
) -> Path:
    """Run (or resume) the study under ``workdir``; write the report artifact to ``output``
    (default ``workdir/report``) and, when given, the Markdown table (+ plot) to ``table``."""
    from reidflow.stages import shard as shard_stage
    from reidflow.stages import synth as synth_stage
    from reidflow.stages.shard import DatasetSource, ShardConfig

    started = now_iso()
    work = Path(workdir)
    output = Path(output) if output else work / "report"
    data = synth_stage.run(cfg.effective_synth(), work / "data", ctx, reuse=True)
    shards: dict[str, Path] = {}
    for name in [*cfg.sources, *cfg.all_targets]:
        out = work / "shards" / name
        src = DatasetSource(reader="market1501", root=str(data / name))
        if not is_current(out, params_digest(shard_stage.resolved_params(ShardConfig(), name, src))):
            shard_stage.run(ShardConfig(), name, src, out, raw_uri=str(data / name), ctx=ctx)
        shards[name] = out
    runs = _train_all(cfg, work, [str(shards[s]) for s in cfg.sources], ctx)
    results = _evaluate_all(cfg, runs, {t: shards[t] for t in cfg.all_targets})
    return _write_report(cfg, runs, shards, results, output, ctx, started, command, table)


def _train_all(
    cfg: DGBenchmarkConfig, work: Path, sources: list[str], ctx: RunContext | None
) -> dict[tuple[str, int], Path]:
    from reidflow.stages import metabin as metabin_stage
    from reidflow.stages import pretrain as pretrain_stage

    runs: dict[tuple[str, int], Path] = {}
    total = len(cfg.variants) * len(cfg.seeds)
    done = 0
    for seed in cfg.seeds:  # seed-major: a partial study already holds every variant
        for name, variant in cfg.variants.items():
            done += 1
            stage_cfg = variant_config(cfg, name, seed)
            out = work / "runs" / f"{name}-seed{seed}"
            runs[(name, seed)] = out
            if is_current(out, params_digest(stage_cfg.model_dump(mode="json"))):
                log.info("dg-benchmark [%d/%d] %s seed %d: already trained, kept", done, total, name, seed)
                continue
            log.info("dg-benchmark [%d/%d] %s seed %d: training (%s)", done, total, name, seed, variant.stage)
            tic = time.perf_counter()
            if variant.stage == "metabin":
                metabin_stage.run(stage_cfg, sources, [], out, ctx)
            else:
                pretrain_stage.run(stage_cfg, sources, None, out, ctx)
            log.info("dg-benchmark %s seed %d: trained in %.0f s", name, seed, time.perf_counter() - tic)
    return runs


def _evaluate_all(
    cfg: DGBenchmarkConfig, runs: dict[tuple[str, int], Path], targets: dict[str, Path]
) -> dict[str, Any]:
    """Per run and target: mean/std over the splits; per run: the average over targets."""
    from reidflow.data.index import ShardIndex
    from reidflow.eval.features import extract_with_meta
    from reidflow.eval.protocols import average_over_targets
    from reidflow.models.artifact import load_model_artifact
    from reidflow.stages.evaluate import dataset_dirs, protocol_splits, score_splits, split_records
    from reidflow.store.artifacts import open_input
    from reidflow.train.runtime import resolve_device

    device = resolve_device(cfg.device).type
    test_sets = {}
    for name, path in targets.items():
        [ddir] = dataset_dirs(open_input(name, str(path)))
        qg = ShardIndex.load(ddir).filter(split=["query", "gallery"])
        test_sets[name] = (qg, protocol_splits(qg, cfg.protocol, cfg.num_splits, cfg.split_seed))
    per_run: dict[str, Any] = {}
    for (variant, seed), path in runs.items():
        model, meta = load_model_artifact(path, device)
        by_target = {}
        for target, (qg, splits) in test_sets.items():
            feats = extract_with_meta(model, meta, qg, batch_size=cfg.batch_size, device=device).features
            res = score_splits(feats, splits, max_rank=20)
            by_target[target] = {"mean": res["mean"], "std": res["std"]}
        per_run[f"{variant}-seed{seed}"] = {
            "variant": variant,
            "seed": seed,
            "targets": by_target,
            "average": {
                group: average_over_targets({t: by_target[t] for t in names})["mean"]
                for group, names in cfg.target_groups().items()
            },
        }
    splits_record = {t: split_records(qg, splits) for t, (qg, splits) in test_sets.items()}
    return {"runs": per_run, "splits": splits_record}


def summarize(cfg: DGBenchmarkConfig, per_run: Mapping[str, Any]) -> dict[str, Any]:
    """Per variant: mean and std over seeds (ddof 0) of rank-1 and mAP, per target and per target group."""
    table: dict[str, Any] = {}
    for variant in cfg.variants:
        rows = [r for r in per_run.values() if r["variant"] == variant]
        cell: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "targets": {}, "groups": {}}
        for group in cfg.target_groups():
            cell["groups"][group] = {
                metric: _mean_std([r["average"][group][metric] for r in rows]) for metric in ("rank-1", "mAP")
            }
        for target in cfg.all_targets:
            cell["targets"][target] = {
                metric: _mean_std([r["targets"][target]["mean"][metric] for r in rows])
                for metric in ("rank-1", "mAP")
            }
        table[variant] = cell
    return table


def _mean_std(fractions: list[float]) -> dict[str, float]:
    percent = 100 * np.asarray(fractions, dtype=np.float64)
    return {"mean": float(percent.mean()), "std": float(percent.std())}


def claim_check(
    table: Mapping[str, Any], candidate: str = "MetaBIN", rivals=("BN", "IN", "BIN")
) -> dict[str, Any]:
    """Per target group: does ``candidate`` beat each rival's average mAP and rank-1 by more than the
    seed std (the larger of the two rows' stds)?"""
    if candidate not in table:
        return {}
    checks: dict[str, Any] = {}
    for group in table[candidate]["groups"]:
        per_rival = {}
        for rival in rivals:
            if rival not in table:
                continue
            per_metric = {}
            for metric in ("mAP", "rank-1"):
                mine, theirs = (
                    table[candidate]["groups"][group][metric],
                    table[rival]["groups"][group][metric],
                )
                gap = mine["mean"] - theirs["mean"]
                noise = max(mine["std"], theirs["std"])
                per_metric[metric] = {"gap": round(gap, 2), "std": round(noise, 2), "beats": gap > noise}
            per_rival[rival] = per_metric
        checks[group] = per_rival
    return checks


def ablation_effects(cfg: DGBenchmarkConfig, table: Mapping[str, Any]) -> dict[str, Any]:
    """For every ablation row: reference minus ablation, per target group, mAP and rank-1 (mean over seeds),
    i.e. what the reference's setting adds."""
    effects: dict[str, Any] = {}
    for name, variant in cfg.variants.items():
        if variant.ablates is None or name not in table or variant.ablates not in table:
            continue
        ref, abl = table[variant.ablates], table[name]
        effects[name] = {
            "reference": variant.ablates,
            "change": variant.change,
            "groups": {
                group: {
                    metric: {
                        "gain": round(
                            ref["groups"][group][metric]["mean"] - abl["groups"][group][metric]["mean"], 2
                        ),
                        "std": round(
                            max(ref["groups"][group][metric]["std"], abl["groups"][group][metric]["std"]), 2
                        ),
                    }
                    for metric in ("mAP", "rank-1")
                }
                for group in ref["groups"]
            },
        }
    return effects


def markdown_table(cfg: DGBenchmarkConfig, table: Mapping[str, Any], rows: list[str] | None = None) -> str:
    """The averages per target group (mean ± std over seeds): one row per variant."""
    groups = list(cfg.target_groups())
    sizes = {g: len(n) for g, n in cfg.target_groups().items()}
    head = ["Method", *[f"{g} ({sizes[g]}) R1" for g in groups], *[f"{g} ({sizes[g]}) mAP" for g in groups]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in rows if rows is not None else list(table):
        cell = table[variant]
        r1 = [_pm(cell["groups"][g]["rank-1"]) for g in groups]
        m = [_pm(cell["groups"][g]["mAP"]) for g in groups]
        lines.append("| " + " | ".join([variant, *r1, *m]) + " |")
    return "\n".join(lines) + "\n"


def per_target_table(cfg: DGBenchmarkConfig, table: Mapping[str, Any]) -> str:
    """mAP per target (mean over seeds), every variant."""
    head = ["Method", *cfg.all_targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, cell in table.items():
        values = [f"{cell['targets'][t]['mAP']['mean']:.1f}" for t in cfg.all_targets]
        lines.append("| " + " | ".join([variant, *values]) + " |")
    return "\n".join(lines) + "\n"


def _pm(stat: Mapping[str, float]) -> str:
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _plot(cfg: DGBenchmarkConfig, table: Mapping[str, Any], out: Path) -> Path:
    """Left: average mAP per target group (mean ± std over seeds). Right: mAP on every target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    groups = list(cfg.target_groups())
    x = np.arange(len(names))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, 3.8), dpi=110, gridspec_kw={"width_ratios": [1, 1.6]}
    )
    width = 0.8 / len(groups)
    for i, group in enumerate(groups):
        means = [table[n]["groups"][group]["mAP"]["mean"] for n in names]
        stds = [table[n]["groups"][group]["mAP"]["std"] for n in names]
        left.bar(x + (i - (len(groups) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=group)
    left.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("mAP % (avg over targets)")
    left.set_title("mean ± std over seeds")
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    targets = cfg.all_targets
    tx = np.arange(len(targets))
    for n in names:
        means = [table[n]["targets"][t]["mAP"]["mean"] for t in targets]
        stds = [table[n]["targets"][t]["mAP"]["std"] for t in targets]
        right.errorbar(tx, means, yerr=stds, marker="o", ms=4, capsize=2, lw=1, label=n)
    right.set_xticks(tx, targets, rotation=30, ha="right", fontsize=8)
    if cfg.drawn.count:
        right.axvline(len(cfg.targets) - 0.5, color="grey", lw=0.8, ls="--")
    right.set_ylabel("mAP % per unseen target")
    right.set_title("per target (left of the dashed line: hand-written; right: drawn)")
    right.legend(fontsize=7, ncol=2)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _write_report(
    cfg: DGBenchmarkConfig,
    runs: dict[tuple[str, int], Path],
    shards: dict[str, Path],
    results: dict[str, Any],
    output: Path,
    ctx: RunContext | None,
    started: str,
    command: str | None,
    table_path: str | Path | None,
) -> Path:
    from reidflow.store.artifacts import open_input, write_artifact

    table = summarize(cfg, results["runs"])
    claims = claim_check(table)
    effects = ablation_effects(cfg, table)
    resolved = cfg.model_dump(mode="json")
    inputs = [open_input(f"{n}-seed{s}", str(p)) for (n, s), p in runs.items()]
    inputs += [open_input(f"target:{t}", str(shards[t])) for t in cfg.all_targets]
    markdown = results_markdown(cfg, table, claims, effects, command, image="dg_benchmark.png")
    with write_artifact(
        output,
        kind="report",
        stage="dg_benchmark",
        params=resolved,
        params_digest=params_digest(resolved),
        seed=cfg.split_seed,
        inputs=inputs,
        ctx=ctx,
        started=started,
    ) as art:
        (art.path / "results.json").write_text(
            json.dumps(
                {"table": table, "claims": claims, "ablations": effects, "runs": results["runs"]}, indent=1
            )
            + "\n"
        )
        (art.path / "splits.json").write_text(json.dumps(results["splits"]) + "\n")
        (art.path / "table.md").write_text(markdown)
        _plot(cfg, table, art.path / "dg_benchmark.png")
        art.metrics = {"table": table, "claims": claims, "ablations": effects}
    if table_path is not None:
        dest = Path(table_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(results_markdown(cfg, table, claims, effects, command, image=f"{dest.stem}.png"))
        (dest.parent / f"{dest.stem}.png").write_bytes((output / "dg_benchmark.png").read_bytes())
    return output


def results_markdown(
    cfg: DGBenchmarkConfig,
    table: Mapping[str, Any],
    claims: Mapping[str, Any],
    effects: Mapping[str, Any],
    command: str | None,
    image: str,
) -> str:
    recipe = json.dumps(cfg.recipe, sort_keys=True)
    groups = cfg.target_groups()
    lines = [
        "# Domain-generalization benchmark (synthetic multi-source)",
        "",
        f"Sources (trained on): {', '.join(cfg.sources)}.  ",
        f"Hand-written unseen targets: {', '.join(cfg.targets)}.  ",
    ]
    if cfg.drawn.count:
        lines.append(
            f"Drawn unseen targets: {cfg.drawn.count} styles drawn at random (seed {cfg.drawn.seed}) from the "
            "documented style distribution (docs/synth.md), on the "
            f"`{cfg.drawn.template}` template: {', '.join(groups['drawn'])}.  "
        )
    lines += [
        (
            f"`{cfg.protocol}` protocol, {cfg.num_splits} random splits per target (seed {cfg.split_seed}, the "
            "same for every model), averaged over the targets of each group.  "
        ),
        f"Seeds: {cfg.seeds}; each cell is the mean ± std over seeds (population std) in %.",
        "",
        markdown_table(cfg, table, cfg.ranked_variants()),
        f"![mean ± std over seeds, and per target]({image})",
        "",
    ]
    if claims:
        lines += ["## MetaBIN vs the plain norms", ""]
        for group, per_rival in claims.items():
            for rival, per_metric in per_rival.items():
                parts = [
                    f"{m}: {v['gap']:+.2f} (seed std {v['std']:.2f}, {'beats' if v['beats'] else 'does not beat'})"
                    for m, v in per_metric.items()
                ]
                lines.append(f"- {group} targets, vs {rival}: " + "; ".join(parts))
        lines.append("")
    if effects:
        lines += [
            "## What each change does (reference row minus the ablation row, mean over seeds)",
            "",
            markdown_table(cfg, table, list(effects)),
        ]
        for name, effect in effects.items():
            parts = [
                f"{group} mAP {v['mAP']['gain']:+.2f} (std {v['mAP']['std']:.2f})"
                for group, v in effect["groups"].items()
            ]
            lines.append(
                f"- **{effect['change'] or name}** ({effect['reference']} vs {name}): " + "; ".join(parts)
            )
        lines.append("")
    lines += ["## Per target (mAP, mean over seeds)", "", per_target_table(cfg, table)]
    lines += ["## Variants", "", "Shared recipe: `" + recipe + "`", ""]
    lines += [
        f"- **{n}** (`reidflow {v.stage}`): `{json.dumps(v.overrides, sort_keys=True)}`"
        for n, v in cfg.variants.items()
    ]
    if command:
        lines += ["", "## Reproduce", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
