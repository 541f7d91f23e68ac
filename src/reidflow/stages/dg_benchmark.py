"""The domain-generalization benchmark: normalization ablations on synthetic multi-source data.

One command (``reidflow dg-benchmark``) runs the whole study with the real stages:

1. ``synth`` generates the benchmark's own domains; ``shard`` shards each of them;
2. every variant (BN, IN, IBN, BIN, MetaBIN, SNR, ...) is trained once per seed on *all* source
   domains with one shared recipe: ``pretrain`` for the plain norms, ``metabin`` for MetaBIN;
3. every model is evaluated on every unseen target domain over the same seeded random splits
   (``protocol``, e.g. ``ilids``: one query and one gallery image for half the ids), and averaged
   over the targets (MetaBIN's Table 5 protocol);
4. the table (mean ± std over seeds), per-target numbers, the splits and a plot go into one report
   artifact whose lineage lists every trained model and target shard.

Each step's artifact is kept under ``workdir``; a rerun skips the ones already made from the same
params (a killed study resumes where it stopped).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import StrictModel, params_digest, validate_as
from reidflow.stages.synth import SynthConfig
from reidflow.store.artifacts import is_current
from reidflow.store.lineage import RunContext, now_iso

log = logging.getLogger(__name__)

TRAINING_STAGES = ("pretrain", "metabin")


class Variant(StrictModel):
    """One row of the table: the stage that trains it and its settings on top of the recipe."""

    stage: Literal["pretrain", "metabin"] = "pretrain"
    overrides: dict[str, Any] = Field(default_factory=dict, description="merged into the recipe")


class DGBenchmarkConfig(StrictModel):
    synth: SynthConfig
    sources: list[str] = Field(min_length=1, description="synth domain names trained on")
    targets: list[str] = Field(min_length=1, description="unseen synth domain names evaluated")
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

        names = [spec.name for spec in resolve_domains(self.synth)]
        for key in ("sources", "targets"):
            missing = [n for n in getattr(self, key) if n not in names]
            if missing:
                raise ValueError(f"{key}: {missing} are not synth domains (synth.domains: {names})")
        overlap = set(self.sources) & set(self.targets)
        if overlap:
            raise ValueError(f"sources and targets overlap in {sorted(overlap)}; targets must be unseen")
        for name in self.variants:
            variant_config(self, name, seed=self.seeds[0])  # every variant validates up front
        return self


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_config(cfg: DGBenchmarkConfig, name: str, seed: int) -> Any:
    """The validated stage config of variant ``name`` at ``seed`` (recipe ⊕ overrides ⊕ seed)."""
    from reidflow.stages.metabin import MetabinConfig
    from reidflow.stages.pretrain import PretrainConfig

    variant = cfg.variants[name]
    data = _merge(_merge(cfg.recipe, variant.overrides), {"seed": seed, "eval": {"enabled": False}})
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
    data = synth_stage.run(cfg.synth, work / "data", ctx, reuse=True)
    shards: dict[str, Path] = {}
    for name in [*cfg.sources, *cfg.targets]:
        out = work / "shards" / name
        src = DatasetSource(reader="market1501", root=str(data / name))
        if not is_current(out, params_digest(shard_stage.resolved_params(ShardConfig(), name, src))):
            shard_stage.run(ShardConfig(), name, src, out, raw_uri=str(data / name), ctx=ctx)
        shards[name] = out
    runs = _train_all(cfg, work, [str(shards[s]) for s in cfg.sources], ctx)
    results = _evaluate_all(cfg, runs, {t: shards[t] for t in cfg.targets})
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
            "average": average_over_targets(by_target)["mean"],
        }
    splits_record = {t: split_records(qg, splits) for t, (qg, splits) in test_sets.items()}
    return {"runs": per_run, "splits": splits_record}


def summarize(cfg: DGBenchmarkConfig, per_run: Mapping[str, Any]) -> dict[str, Any]:
    """Per variant: mean and std over seeds (ddof 0) of rank-1 and mAP, per target and averaged."""
    table: dict[str, Any] = {}
    for variant in cfg.variants:
        rows = [r for r in per_run.values() if r["variant"] == variant]
        cell: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "targets": {}}
        for metric in ("rank-1", "mAP"):
            cell[metric] = _mean_std([r["average"][metric] for r in rows])
        for target in cfg.targets:
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
    """Does ``candidate`` beat each rival's average mAP and rank-1 by more than the seed std?"""
    if candidate not in table:
        return {}
    checks = {}
    for rival in rivals:
        if rival not in table:
            continue
        per_metric = {}
        for metric in ("mAP", "rank-1"):
            gap = table[candidate][metric]["mean"] - table[rival][metric]["mean"]
            noise = max(table[candidate][metric]["std"], table[rival][metric]["std"])
            per_metric[metric] = {"gap": round(gap, 2), "std": round(noise, 2), "beats": gap > noise}
        checks[rival] = per_metric
    return checks


def markdown_table(cfg: DGBenchmarkConfig, table: Mapping[str, Any]) -> str:
    """Table 5's shape: one row per variant, rank-1 / mAP per target and their average (mean ± std)."""
    head = ["Method", *[f"{t} R1 / mAP" for t in cfg.targets], "Average R1", "Average mAP"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, cell in table.items():
        per_target = [
            f"{cell['targets'][t]['rank-1']['mean']:.1f} / {cell['targets'][t]['mAP']['mean']:.1f}"
            for t in cfg.targets
        ]
        avg = [f"{cell[m]['mean']:.1f} ± {cell[m]['std']:.1f}" for m in ("rank-1", "mAP")]
        lines.append("| " + " | ".join([variant, *per_target, *avg]) + " |")
    return "\n".join(lines) + "\n"


def _plot(table: Mapping[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    for i, metric in enumerate(("rank-1", "mAP")):
        means = [table[n][metric]["mean"] for n in names]
        stds = [table[n][metric]["std"] for n in names]
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, label=metric)
    ax.set_xticks(x, names)
    ax.set_ylabel("% on unseen domains (avg)")
    ax.set_title("DG benchmark: mean ± std over seeds")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
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
    resolved = cfg.model_dump(mode="json")
    inputs = [open_input(f"{n}-seed{s}", str(p)) for (n, s), p in runs.items()]
    inputs += [open_input(f"target:{t}", str(shards[t])) for t in cfg.targets]
    markdown = results_markdown(cfg, table, claims, command, image="dg_benchmark.png")
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
            json.dumps({"table": table, "claims": claims, "runs": results["runs"]}, indent=1) + "\n"
        )
        (art.path / "splits.json").write_text(json.dumps(results["splits"]) + "\n")
        (art.path / "table.md").write_text(markdown)
        _plot(table, art.path / "dg_benchmark.png")
        art.metrics = {"table": table, "claims": claims}
    if table_path is not None:
        dest = Path(table_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(results_markdown(cfg, table, claims, command, image=f"{dest.stem}.png"))
        (dest.parent / f"{dest.stem}.png").write_bytes((output / "dg_benchmark.png").read_bytes())
    return output


def results_markdown(
    cfg: DGBenchmarkConfig,
    table: Mapping[str, Any],
    claims: Mapping[str, Any],
    command: str | None,
    image: str,
) -> str:
    recipe = json.dumps(cfg.recipe, sort_keys=True)
    lines = [
        "# Domain-generalization benchmark (synthetic multi-source)",
        "",
        f"Sources (trained on, all images of their train split): {', '.join(cfg.sources)}.  ",
        (
            f"Unseen targets: {', '.join(cfg.targets)}; `{cfg.protocol}` protocol, {cfg.num_splits} random "
            f"splits (seed {cfg.split_seed}, the same for every model), averaged over the targets.  "
        ),
        f"Seeds: {cfg.seeds}; each cell is the mean ± std over seeds (population std) in %.",
        "",
        markdown_table(cfg, table),
        f"![mean ± std over seeds]({image})",
        "",
    ]
    if claims:
        lines += ["## MetaBIN vs the plain norms (average over targets)", ""]
        for rival, per_metric in claims.items():
            parts = [
                f"{m}: {v['gap']:+.2f} (seed std {v['std']:.2f}, {'beats' if v['beats'] else 'does not beat'})"
                for m, v in per_metric.items()
            ]
            lines.append(f"- vs {rival}: " + "; ".join(parts))
        lines.append("")
    lines += ["## Variants", "", "Shared recipe: `" + recipe + "`", ""]
    lines += [
        f"- **{n}** (`reidflow {v.stage}`): `{json.dumps(v.overrides, sort_keys=True)}`"
        for n, v in cfg.variants.items()
    ]
    if command:
        lines += ["", "## Reproduce", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
