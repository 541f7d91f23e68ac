"""The SDA evidence study: does pretraining on SDA translations beat raw sources and plain CycleGAN?

One command (``reidflow sda-study``, params section ``sda_study``) runs it with the real stages:

1. ``synth`` generates the study's own domains (the sources, the hand-written target styles and
   ``drawn.count`` target styles drawn at random); ``shard`` shards each of them;
2. per target and seed: ``pretrain`` on the raw sources with BN adapted to the target (row ``raw``;
   it is also both frozen encoders), ``sda train`` with the relation loss (``SDA``) and with
   ``relation_weight: 0`` (``CycleGAN``), ``sda translate`` of the sources with each, and ``pretrain``
   on each translation (BN adapted to the target, like the raw row);
3. every model is evaluated on the target's query/gallery. Target labels are used there only: the
   training runs see the target's unlabelled train split (BN adaptation, the GAN), and every model is
   the last iterate (no model selection);
4. the evidence beside the headline: (a) a logistic-regression domain classifier (target vs source)
   on the raw model's features, fitted on raw train-split images and scored (balanced accuracy) on
   raw and on translated query/gallery images; (b) the raw (source) model's mAP on the sources'
   query/gallery, raw vs translated; (c) the distance of the dataset cards' colour statistics to the
   target's, raw vs translated; (d) SDA vs raw and vs CycleGAN, beaten by more than the seed std.

Each step's artifact is kept under ``workdir``; a rerun keeps those made from the same params and the
same upstream artifacts (a killed study resumes where it stopped).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import StrictModel, deep_merge, params_digest, validate_as
from reidflow.stages.study import (
    StudyDomains,
    bar_plot,
    dataset_dirs,
    mean_std,
    pm,
    prepare_domains,
    retrieval,
    reuse_or_run,
    select_targets,
    write_study_report,
)
from reidflow.store.lineage import RunContext, now_iso

ROWS = ("raw", "CycleGAN", "SDA")
METRICS = ("domain_accuracy", "source_mAP", "colour_distance", "target_rank-1", "target_mAP")
COLOUR_CHANNELS = ("r", "g", "b", "brightness", "saturation")


class DomainClassifierConfig(StrictModel):
    max_images: int = Field(400, ge=10, description="images per class and split (sampled with the seed)")
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression")


class SDAStudyConfig(StudyDomains):
    pretrain: dict[str, Any] = Field(default_factory=dict, description="`pretrain` recipe of every model")
    sda: dict[str, Any] = Field(
        default_factory=dict, description="`sda` recipe (SDA row; CycleGAN: relation 0)"
    )
    domain_classifier: DomainClassifierConfig = Field(default_factory=DomainClassifierConfig)

    @model_validator(mode="after")
    def _check(self) -> SDAStudyConfig:
        configs = stage_configs(self, self.seeds[0])
        if configs["SDA"].loss.relation_weight <= 0:
            raise ValueError("sda.loss.relation_weight: the SDA row needs a relation weight > 0")
        return self


def stage_configs(cfg: SDAStudyConfig, seed: int) -> dict[str, Any]:
    """The validated stage configs at ``seed``: ``pretrain`` (every model, BN adapted to the target,
    no quick evaluation), ``SDA`` and ``CycleGAN`` (the same recipe, relation weight 0)."""
    from reidflow.stages.pretrain import PretrainConfig
    from reidflow.stages.sda import SDAConfig

    fixed = {"seed": seed, "engine": {"device": cfg.device, "seed": seed}}
    pretrain = deep_merge(
        deep_merge(cfg.pretrain, fixed), {"eval": {"enabled": False}, "target_bn": {"enabled": True}}
    )
    sda = deep_merge(cfg.sda, fixed)
    cyclegan = deep_merge(sda, {"loss": {"relation_weight": 0.0}, "relation": {"online": False}})
    return {
        "pretrain": validate_as(PretrainConfig, pretrain, "sda_study.pretrain"),
        "SDA": validate_as(SDAConfig, sda, "sda_study.sda"),
        "CycleGAN": validate_as(SDAConfig, cyclegan, "sda_study.sda (relation_weight 0)"),
    }


def run(
    cfg: SDAStudyConfig,
    workdir: str | Path,
    output: str | Path | None = None,
    ctx: RunContext | None = None,
    command: str | None = None,
    table: str | Path | None = None,
    only_targets: Sequence[str] | None = None,
) -> Path | None:
    """Run (or resume) the study under ``workdir``; write the report artifact to ``output`` (default
    ``workdir/report``) and, when given, the Markdown (+ plot and sample grid) to ``table``. With
    ``only_targets`` train those targets only and write no report (returns None)."""

    started = now_iso()
    work = Path(workdir)
    output = Path(output) if output else work / "report"
    targets = select_targets(cfg, only_targets, "sda-study")
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
                "scores": _score_one(cfg, paths, sources, shards[target], seed),
            }
    if only_targets:
        return None
    return _write_report(cfg, runs, shards, output, ctx, started, command, table)


def _train_one(
    cfg: SDAStudyConfig, work: Path, seed: int, sources: list[Path], target: Path, ctx: RunContext | None
) -> dict[str, Path]:
    """raw pretrain -> (SDA, CycleGAN) train -> translate -> pretrain, for one target and seed."""
    from reidflow.stages import pretrain as pretrain_stage
    from reidflow.stages import sda as sda_stage

    configs = stage_configs(cfg, seed)
    pcfg = configs["pretrain"]
    pdigest = params_digest(pcfg.model_dump(mode="json"))
    src = [str(s) for s in sources]
    where = f"{target.name} seed {seed}"
    raw = work / f"raw-seed{seed}"
    reuse_or_run(
        "sda-study",
        f"{where}: raw pretrain",
        raw,
        pdigest,
        [*sources, target],
        lambda: pretrain_stage.run(pcfg, src, str(target), raw, ctx),
    )
    paths = {"raw": raw}
    for row in ("CycleGAN", "SDA"):
        scfg = configs[row]
        dump = scfg.model_dump(mode="json")
        encoders = [raw] if scfg.loss.relation_weight > 0 else []
        encoder = str(raw) if encoders else None
        gen = work / f"{row}-generator-seed{seed}"
        reuse_or_run(
            "sda-study",
            f"{where}: {row} train",
            gen,
            params_digest({"mode": "train", **dump}),
            [*sources, target, *encoders],
            lambda s=scfg, g=gen, e=encoder: sda_stage.train(s, src, str(target), g, e, e, ctx),
        )
        translated = work / f"{row}-translated-seed{seed}"
        reuse_or_run(
            "sda-study",
            f"{where}: {row} translate",
            translated,
            params_digest({"mode": "translate", **dump}),
            [gen, *sources],
            lambda s=scfg, g=gen, t=translated: sda_stage.translate(s, str(g), src, t, ctx),
        )
        model = work / f"{row}-seed{seed}"
        reuse_or_run(
            "sda-study",
            f"{where}: pretrain on {row} translations",
            model,
            pdigest,
            [translated, target],
            lambda t=translated, m=model: pretrain_stage.run(pcfg, [str(t)], str(target), m, ctx),
        )
        paths[f"{row}_generator"] = gen
        paths[f"{row}_translated"] = translated
        paths[row] = model
    return paths


# ------------------------------------------------------------------------------------------ scoring


def _query_gallery(ddir: Path) -> Any:
    from reidflow.data.index import ShardIndex

    return ShardIndex.load(ddir).filter(split=["query", "gallery"])


def _colour_vector(ddir: Path) -> np.ndarray:
    """Mean and std of R, G, B, brightness and saturation over the dataset (from its dataset card)."""
    from reidflow.data.card import CARD_JSON

    by_domain = json.loads((ddir / CARD_JSON).read_text())["colour"]["by_domain"]
    counts = np.array([d["images"] for d in by_domain.values()], dtype=np.float64)
    vectors = np.array(
        [[d[c][k] for k in ("mean", "std") for c in COLOUR_CHANNELS] for d in by_domain.values()]
    )
    return (vectors * counts[:, None]).sum(axis=0) / counts.sum()


def _score_one(
    cfg: SDAStudyConfig, paths: Mapping[str, Path], sources: list[Path], target: Path, seed: int
) -> dict[str, dict[str, float]]:
    """Per row: every METRICS value (fractions; colour distance in [0, 1] units)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from reidflow.data.index import ShardIndex
    from reidflow.eval.features import extract_with_meta
    from reidflow.models.artifact import load_model_artifact
    from reidflow.train.runtime import resolve_device

    device = resolve_device(cfg.device).type
    limit = cfg.domain_classifier.max_images

    def sample(index: Any) -> Any:
        """The same positions for the same index size: raw and translated rows pick the same images."""
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(index), min(limit, len(index)), replace=False))
        return index.take(rows)

    raw_model, raw_meta = load_model_artifact(paths["raw"], device)

    def features(model: Any, meta: Any, index: Any) -> Any:
        return extract_with_meta(model, meta, index, batch_size=cfg.batch_size, device=device)

    [target_dir] = dataset_dirs(target)
    target_index = ShardIndex.load(target_dir)
    target_qg = target_index.filter(split=["query", "gallery"])
    target_colour = _colour_vector(target_dir)
    # (a) fitted once on raw train-split images: the sources (0) vs the target (1)
    train_src = sample(ShardIndex.load(_all_dirs(sources)).filter(split="train"))
    train_tgt = sample(target_index.filter(split="train"))
    x = np.concatenate(
        [features(raw_model, raw_meta, train_src).features, features(raw_model, raw_meta, train_tgt).features]
    )
    y = np.r_[np.zeros(len(train_src)), np.ones(len(train_tgt))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.domain_classifier.C, max_iter=2000))
    clf.fit(x, y)
    test_tgt = features(raw_model, raw_meta, sample(target_qg)).features
    target_hits = float(np.mean(clf.predict(test_tgt) == 1))

    scores: dict[str, dict[str, float]] = {}
    for row in ROWS:
        images = sources if row == "raw" else [paths[f"{row}_translated"]]
        dirs = _all_dirs(images)
        test_src = features(
            raw_model, raw_meta, sample(ShardIndex.load(dirs).filter(split=["query", "gallery"]))
        )
        accuracy = 0.5 * (float(np.mean(clf.predict(test_src.features) == 0)) + target_hits)
        identity = []  # (b) per source dataset: cameras are per domain
        for ddir in dirs:
            qg = _query_gallery(ddir)
            identity.append(retrieval(features(raw_model, raw_meta, qg), np.asarray(qg.splits))["mAP"])
        colour = [float(np.linalg.norm(_colour_vector(d) - target_colour)) for d in dirs]  # (c)
        model, meta = (raw_model, raw_meta) if row == "raw" else load_model_artifact(paths[row], device)
        on_target = retrieval(features(model, meta, target_qg), np.asarray(target_qg.splits))
        scores[row] = {
            "domain_accuracy": accuracy,
            "source_mAP": float(np.mean(identity)),
            "colour_distance": float(np.mean(colour)),
            "target_rank-1": on_target["rank-1"],
            "target_mAP": on_target["mAP"],
        }
    return scores


def _all_dirs(artifacts: Sequence[Path]) -> list[Path]:
    return [d for a in artifacts for d in dataset_dirs(Path(a))]


# ------------------------------------------------------------------------------------------- report


def summarize(cfg: SDAStudyConfig, runs: Mapping[str, Any]) -> dict[str, Any]:
    """Per row: mean and std over seeds (population std) of every metric, per target and averaged over
    the targets (the average is taken per seed first). mAP, rank-1 and accuracy in %."""
    table: dict[str, Any] = {}
    for row in ROWS:
        cell: dict[str, Any] = {"targets": {}, "average": {}}
        for target in cfg.all_targets:
            per_seed = [r["scores"][row] for r in runs.values() if r["target"] == target]
            cell["targets"][target] = {m: _mean_std([s[m] for s in per_seed], m) for m in METRICS}
        for metric in METRICS:
            averages = [
                np.mean([r["scores"][row][metric] for r in runs.values() if r["seed"] == seed])
                for seed in cfg.seeds
            ]
            cell["average"][metric] = _mean_std(averages, metric)
        table[row] = cell
    return table


def _mean_std(values: Sequence[float], metric: str) -> dict[str, float]:
    return mean_std(values, 1.0 if metric == "colour_distance" else 100.0)


def claim_check(cfg: SDAStudyConfig, table: Mapping[str, Any]) -> dict[str, Any]:
    """Target mAP: does SDA beat raw and CycleGAN by more than the seed std (the larger of the two
    rows'), averaged over the targets and on each target?"""
    checks: dict[str, Any] = {}
    for scope in ["average", *cfg.all_targets]:
        per_rival = {}
        for rival in ("raw", "CycleGAN"):
            mine, theirs = (
                (table[r]["average"] if scope == "average" else table[r]["targets"][scope])["target_mAP"]
                for r in ("SDA", rival)
            )
            gap = mine["mean"] - theirs["mean"]
            noise = max(mine["std"], theirs["std"])
            per_rival[rival] = {"gap": round(gap, 2), "std": round(noise, 2), "beats": gap > noise}
        checks[scope] = per_rival
    return checks


def markdown_tables(cfg: SDAStudyConfig, table: Mapping[str, Any]) -> str:
    """The evidence averaged over the targets, then the target mAP per target (last column: average)."""
    head = [
        "Training images",
        "(a) domain clf. acc. %",
        "(b) source-model mAP on source q/g %",
        "(c) colour distance to target",
        "target rank-1 %",
        "target mAP %",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        avg = table[row]["average"]
        cells = [pm(avg[m], 3 if m == "colour_distance" else 1) for m in METRICS]
        lines.append("| " + " | ".join([row, *cells]) + " |")
    head = ["Training images", *[f"{t} mAP %" for t in cfg.all_targets], "target mAP % (average)"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        cells = [pm(table[row]["targets"][t]["target_mAP"]) for t in cfg.all_targets]
        lines.append("| " + " | ".join([row, *cells, pm(table[row]["average"]["target_mAP"])]) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(
    cfg: SDAStudyConfig,
    table: Mapping[str, Any],
    claims: Mapping[str, Any],
    command: str | None,
    images: Mapping[str, str],
) -> str:
    lines = cfg.header_lines(
        "SDA evidence study (synthetic source -> target translation)", "labelled, translated"
    )
    lines += [
        (
            "Rows name the images the target model was pretrained on: `raw` sources, their `CycleGAN` "
            "translation (`relation_weight: 0`) or their `SDA` translation (relation consistency on). Every "
            "model adapts BN to the target's unlabelled train split; target labels are used for the "
            "evaluation only. (a) balanced accuracy of a target-vs-source logistic regression on the raw "
            "model's features, fitted on raw train-split images, on the row's source query/gallery images "
            "and the target's (50 % = the styles are indistinguishable); (b) the raw model's mAP on the "
            "sources' query/gallery as the row's images show them (identity structure kept); (c) Euclidean "
            "distance of the dataset cards' colour statistics (mean and std of R, G, B, brightness, "
            "saturation in [0, 1]) to the target's."
        ),
        "",
        markdown_tables(cfg, table),
        f"![target mAP per row and target]({images['plot']})",
        "",
        "## SDA vs raw sources and vs CycleGAN (target mAP)",
        "",
    ]
    for scope, per_rival in claims.items():
        parts = [
            f"vs {rival} {v['gap']:+.2f} (seed std {v['std']:.2f}, "
            + ("beats)" if v["beats"] else "does not beat)")
            for rival, v in per_rival.items()
        ]
        lines.append(f"- {'average over targets' if scope == 'average' else scope}: " + "; ".join(parts))
    lines += ["", "## Sample translations", ""]
    lines += [
        f"{key.removeprefix('samples_')} (source | SDA-translated | nearest-colour target image):\n\n"
        f"![{key.removeprefix('samples_')}]({name})\n"
        for key, name in images.items()
        if key.startswith("samples_")
    ]
    lines += [
        "## Recipes",
        "",
        "pretrain: `" + json.dumps(cfg.pretrain, sort_keys=True) + "`  ",
        "sda: `" + json.dumps(cfg.sda, sort_keys=True) + "`",
    ]
    if command:
        lines += ["", "## Reproduce", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def _plot(cfg: SDAStudyConfig, table: Mapping[str, Any], out: Path) -> None:
    def cell(row: str, scope: str) -> Mapping[str, float]:
        return (table[row]["average"] if scope == "average" else table[row]["targets"][scope])["target_mAP"]

    bar_plot(ROWS, [*cfg.all_targets, "average"], cell, "target mAP % (mean ± std over seeds)", out)


def _write_report(
    cfg: SDAStudyConfig,
    runs: Mapping[str, Any],
    shards: Mapping[str, Path],
    output: Path,
    ctx: RunContext | None,
    started: str,
    command: str | None,
    table_path: str | Path | None,
) -> Path:
    from reidflow.stages.sda import SAMPLES_FILE
    from reidflow.store.artifacts import open_input

    table = summarize(cfg, runs)
    claims = claim_check(cfg, table)
    inputs = [
        open_input(f"{key}:{part}", path)
        for key, r in runs.items()
        for part, path in r["paths"].items()
        if part in ROWS or part.endswith("_generator")
    ]
    inputs += [open_input(f"shards:{name}", str(path)) for name, path in shards.items()]
    first = {t: next(r for r in runs.values() if r["target"] == t) for t in cfg.all_targets}
    samples = {t: Path(first[t]["paths"]["SDA_generator"]) / SAMPLES_FILE for t in cfg.all_targets}
    images: dict[str, tuple[str, Any]] = {"plot": ("sda_study.png", lambda path: _plot(cfg, table, path))}
    for target, src in samples.items():
        images[f"samples_{target}"] = (f"samples_{target}.png", lambda path, s=src: shutil.copyfile(s, path))
    return write_study_report(
        stage="sda_study",
        cfg=cfg,
        output=output,
        inputs=inputs,
        ctx=ctx,
        started=started,
        images=images,
        results={"table": table, "claims": claims},
        runs=runs,
        metrics={"table": table, "claims": claims},
        markdown=lambda names: results_markdown(cfg, table, claims, command, names),
        table_path=table_path,
    )
