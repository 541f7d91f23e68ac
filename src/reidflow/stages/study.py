"""What the evidence studies (``dg-benchmark``, ``sda-study``, ``mmt-study``) share.

- :class:`StudyDomains`: the study's own synthetic domains, sources, hand-written and drawn target
  styles, seeds and device, validated together (the base of the sda and mmt study configs);
- :func:`prepare_domains`: the study's own synthetic domains, generated and sharded under its workdir;
- :func:`reuse_or_run`: a step's artifact is kept when it was made from the same params by this code
  from the current upstream artifacts (a killed study resumes where it stopped);
- :func:`mean_std` / :func:`pm`: the cells of the tables (population std over seeds);
- :func:`retrieval`: query-vs-gallery mAP and rank-1 of one model on one dataset, no re-ranking;
- :func:`bar_plot`: one group of bars (mean ± std) per target and the average, one bar per row;
- :func:`select_targets`, :func:`two_net_configs`: a run's targets (``--target``) and the two
  pretrain nets of a study seed;
- :func:`summarize_rows`, :func:`check_claims`, :func:`rows_markdown`, :func:`claim_lines`: the tables
  of the studies whose rows are methods and whose cells are target rank-1 / mAP;
- :func:`write_study_report`: the report artifact and the results file beside its images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import StrictModel, params_digest
from reidflow.data.synth.style_draw import DrawnDomains
from reidflow.stages.synth import SynthConfig, with_drawn
from reidflow.store.artifacts import is_current, read_lineage
from reidflow.store.lineage import RunContext

log = logging.getLogger(__name__)


class StudyDomains(StrictModel):
    """Domains, targets, seeds and device of a study; subclasses add their recipes and rows."""

    synth: SynthConfig
    sources: list[str] = Field(min_length=1, description="labelled synth domains the models train on")
    targets: list[str] = Field(default_factory=list, description="hand-written target styles")
    drawn: DrawnDomains = Field(default_factory=DrawnDomains, description="target styles drawn at random")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _check_domains(self) -> StudyDomains:
        from reidflow.stages.synth import resolve_domains

        names = [spec.name for spec in resolve_domains(self.effective_synth())]
        for key in ("sources", "targets"):
            missing = [n for n in getattr(self, key) if n not in names]
            if missing:
                raise ValueError(f"{key}: {missing} are not synth domains (synth.domains: {names})")
        if not self.all_targets:
            raise ValueError("targets: none given and drawn.count is 0; the study needs a target style")
        overlap = set(self.sources) & set(self.all_targets)
        if overlap:
            raise ValueError(f"sources and targets overlap in {sorted(overlap)}")
        return self

    @property
    def all_targets(self) -> list[str]:
        return [*self.targets, *self.drawn.names()]

    def effective_synth(self) -> SynthConfig:
        """The listed domains plus the drawn target styles."""
        return with_drawn(self.synth, self.drawn)

    def header_lines(self, title: str, sources_label: str) -> list[str]:
        """The head of a results file: title, sources, hand-written and drawn targets, seeds."""
        lines = [
            f"# {title}",
            "",
            f"Sources ({sources_label}): {', '.join(self.sources)}.  ",
            f"Hand-written target styles: {', '.join(self.targets) or 'none'}.  ",
        ]
        if self.drawn.count:
            lines.append(
                f"Drawn target styles: {', '.join(self.drawn.names())} (seed {self.drawn.seed}, the documented "
                "style distribution of docs/synth.md; nobody tuned on them).  "
            )
        return [*lines, f"Seeds: {self.seeds}; each cell is the mean ± std over seeds (population std).", ""]


def prepare_domains(
    synth_cfg: Any, names: Sequence[str], work: Path, ctx: RunContext | None
) -> dict[str, Path]:
    """Generate ``synth_cfg``'s domains under ``work/data`` and shard ``names`` under ``work/shards``."""
    from reidflow.stages import shard as shard_stage
    from reidflow.stages import synth as synth_stage
    from reidflow.stages.shard import DatasetSource, ShardConfig

    data = synth_stage.run(synth_cfg, work / "data", ctx, reuse=True)
    shards: dict[str, Path] = {}
    for name in names:
        out = work / "shards" / name
        src = DatasetSource(reader="market1501", root=str(data / name))
        if not is_current(out, params_digest(shard_stage.resolved_params(ShardConfig(), name, src))):
            shard_stage.run(ShardConfig(), name, src, out, raw_uri=str(data / name), ctx=ctx)
        shards[name] = out
    return shards


def is_reusable(out: Path, digest: str, upstream: Sequence[Path]) -> bool:
    """``out`` was made from these params by this code from the current ``upstream`` artifacts."""
    if not is_current(out, digest):
        return False
    recorded = {i.get("digest") for i in read_lineage(out).get("inputs", [])}
    return recorded == {read_lineage(Path(p))["artifact"]["digest"] for p in upstream}


def reuse_or_run(
    study: str, label: str, out: Path, digest: str, upstream: Sequence[Path], make: Callable[[], Any]
) -> Path:
    """Run ``make`` (which writes ``out``) unless :func:`is_reusable`; return ``out``."""
    if is_reusable(out, digest, upstream):
        log.info("%s %s: already made, kept", study, label)
    else:
        log.info("%s %s: running", study, label)
        make()
    return out


def mean_std(values: Sequence[float], scale: float = 100.0) -> dict[str, float]:
    """Mean and population std of ``scale * values`` (fractions become %)."""
    x = scale * np.asarray(values, dtype=np.float64)
    return {"mean": float(x.mean()), "std": float(x.std())}


def pm(stat: Mapping[str, float], digits: int = 1) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def dataset_dirs(artifact: Path) -> list[Path]:
    """The dataset directories (one per ``index.parquet``) of a shards artifact."""
    return sorted(p.parent for p in Path(artifact).glob("*/index.parquet"))


def retrieval(feats: Any, splits: np.ndarray) -> dict[str, float]:
    """mAP and rank-1 (fractions) of the query rows of ``feats`` against its gallery rows."""
    from reidflow.eval.scoring import headline, score_variants

    is_q = splits == "query"
    q, g = feats.take(np.flatnonzero(is_q)), feats.take(np.flatnonzero(~is_q))
    variants, _ = score_variants(
        q.features, g.features, q.pids, g.pids, q.camids, g.camids, max_rank=20, rerank=None
    )
    scores = headline(variants["plain"])
    return {"mAP": scores["mAP"], "rank-1": scores["rank1"]}


def query_gallery(shards: Path, stage: str) -> Any:
    """The query and gallery rows of the one dataset of a shards artifact (errors name ``stage``)."""
    from reidflow.data.index import ShardIndex
    from reidflow.errors import DataError

    dirs = dataset_dirs(shards)
    if len(dirs) != 1:
        raise DataError(f"{stage}: {shards} holds {len(dirs)} datasets; expected the one target dataset")
    index = ShardIndex.load(dirs[0])
    if not {"query", "gallery"} <= set(index.splits):
        raise DataError(f"{stage}: {dirs[0]} has no query/gallery split to score on")
    return index.filter(split=["query", "gallery"])


def target_scores(model_dir: Path, shards: Path, device: str, batch_size: int) -> dict[str, float]:
    """``retrieval`` of the model artifact ``model_dir`` on the query/gallery of ``shards``."""
    from reidflow.eval.features import extract_with_meta
    from reidflow.models.artifact import load_model_artifact

    index = query_gallery(shards, "study")
    model, meta = load_model_artifact(Path(model_dir), device)
    feats = extract_with_meta(model, meta, index, batch_size=batch_size, device=device)
    return retrieval(feats, np.asarray(index.splits))


def bar_plot(
    rows: Sequence[str],
    scopes: Sequence[str],
    cell: Callable[[str, str], Mapping[str, float]],
    ylabel: str,
    out: Path,
) -> None:
    """Grouped bars: one group per scope (targets, then "average"), one bar (mean ± std) per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(scopes))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(2 + 1.7 * len(scopes), 3.6), dpi=110)
    for i, row in enumerate(rows):
        cells = [cell(row, scope) for scope in scopes]
        offset = (i - (len(rows) - 1) / 2) * width
        ax.bar(
            x + offset,
            [c["mean"] for c in cells],
            width,
            yerr=[c["std"] for c in cells],
            capsize=3,
            label=row,
        )
    ax.set_xticks(x, scopes, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_study_report(
    *,
    stage: str,
    cfg: StudyDomains,
    output: Path,
    inputs: Sequence[Any],
    ctx: RunContext | None,
    started: str,
    images: Mapping[str, tuple[str, Callable[[Path], Any]]],
    results: Mapping[str, Any],
    runs: Mapping[str, Any],
    metrics: Mapping[str, Any],
    markdown: Callable[[Mapping[str, str]], str],
    table_path: str | Path | None,
) -> Path:
    """Write a study's report artifact and, when ``table_path`` is given, its Markdown beside copies
    of its images.

    ``images``: key -> (file name in the artifact, a function drawing it there). ``markdown`` renders
    the results file from the image names it should link (key -> name). ``results.json`` holds
    ``results`` and then ``runs`` without their local paths (they would not resolve elsewhere). Beside ``table_path`` the
    images are renamed after its stem: ``plot`` -> ``<stem>.png``, any other key -> ``<stem>_<key>.png``.
    """
    import json
    import shutil

    from reidflow.store.artifacts import write_artifact

    resolved = cfg.model_dump(mode="json")
    names = {key: name for key, (name, _) in images.items()}
    with write_artifact(
        output,
        kind="report",
        stage=stage,
        params=resolved,
        params_digest=params_digest(resolved),
        seed=cfg.seeds[0],
        inputs=list(inputs),
        ctx=ctx,
        started=started,
    ) as art:
        for name, draw in images.values():
            draw(art.path / name)
        runs_json = {k: {key: v for key, v in r.items() if key != "paths"} for k, r in runs.items()}
        (art.path / "results.json").write_text(json.dumps({**results, "runs": runs_json}, indent=1) + "\n")
        (art.path / "table.md").write_text(markdown(names))
        art.metrics = dict(metrics)
    if table_path is not None:
        dest = Path(table_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        renamed = {key: f"{dest.stem}.png" if key == "plot" else f"{dest.stem}_{key}.png" for key in names}
        for key, name in names.items():
            shutil.copyfile(output / name, dest.parent / renamed[key])
        dest.write_text(markdown(renamed))
    return output


def select_targets(cfg: StudyDomains, only_targets: Sequence[str] | None, study: str) -> list[str]:
    """The targets a run trains: all, or ``only_targets`` (each must be one of the study's)."""
    from reidflow.errors import ConfigError

    unknown = sorted(set(only_targets or ()) - set(cfg.all_targets))
    if unknown:
        raise ConfigError(f"{study}: --target {unknown} not among the study's targets {cfg.all_targets}")
    return [t for t in cfg.all_targets if not only_targets or t in only_targets]


def two_net_configs(
    recipe: Mapping[str, Any], seed: int, device: str, where: str, backbone: str | None = None
) -> dict[str, Any]:
    """``net1``/``net2``: the ``pretrain`` recipe at net seeds 2·seed and 2·seed + 1 (MMT's two nets),
    BN adapted to the target, no quick evaluation; ``backbone`` replaces the recipe's."""
    from reidflow.config import deep_merge, validate_as
    from reidflow.stages.pretrain import PretrainConfig

    configs: dict[str, Any] = {}
    for i, net_seed in enumerate((2 * seed, 2 * seed + 1), start=1):
        fixed: dict[str, Any] = {
            "seed": net_seed,
            "engine": {"device": device, "seed": net_seed},
            "eval": {"enabled": False},
            "target_bn": {"enabled": True},
        }
        if backbone is not None:
            fixed["model"] = {"backbone": backbone}
        configs[f"net{i}"] = validate_as(PretrainConfig, deep_merge(recipe, fixed), f"{where} (net {i})")
    return configs


TARGET_METRICS = ("target_rank-1", "target_mAP")


def summarize_rows(cfg: StudyDomains, runs: Mapping[str, Any], rows: Sequence[str]) -> dict[str, Any]:
    """Per row: mean ± std over seeds (in %) of ``runs[...]["scores"][row]`` per target, and of the
    per-seed average over targets."""
    table: dict[str, Any] = {}
    for row in rows:
        cell: dict[str, Any] = {"targets": {}, "average": {}}
        for target in cfg.all_targets:
            per_seed = [r["scores"][row] for r in runs.values() if r["target"] == target]
            cell["targets"][target] = {m: mean_std([s[m] for s in per_seed]) for m in TARGET_METRICS}
        for metric in TARGET_METRICS:
            averages = [
                np.mean([r["scores"][row][metric] for r in runs.values() if r["seed"] == seed])
                for seed in cfg.seeds
            ]
            cell["average"][metric] = mean_std(averages)
        table[row] = cell
    return table


def check_claims(
    cfg: StudyDomains, table: Mapping[str, Any], pairs: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Target mAP: each pair's row beats its rival by more than the larger seed std of the two, on the
    average over targets and on each target (pairs with a row missing from ``table`` are left out)."""
    checks: dict[str, Any] = {}
    for scope in ["average", *cfg.all_targets]:
        per_pair = {}
        for mine_row, rival in pairs:
            if mine_row not in table or rival not in table:
                continue
            mine, theirs = (
                (table[r]["average"] if scope == "average" else table[r]["targets"][scope])["target_mAP"]
                for r in (mine_row, rival)
            )
            gap, noise = mine["mean"] - theirs["mean"], max(mine["std"], theirs["std"])
            per_pair[f"{mine_row} vs {rival}"] = {
                "gap": round(gap, 2),
                "std": round(noise, 2),
                "beats": gap > noise,
            }
        checks[scope] = per_pair
    return checks


def rows_markdown(cfg: StudyDomains, table: Mapping[str, Any], first: str) -> str:
    """Rows of ``table``; per target mAP, then the average rank-1 and (last column) the average mAP."""
    head = [first, *[f"{t} mAP %" for t in cfg.all_targets], "target rank-1 %", "target mAP %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cell in table.items():
        cells = [pm(cell["targets"][t]["target_mAP"]) for t in cfg.all_targets]
        avg = cell["average"]
        lines.append("| " + " | ".join([row, *cells, pm(avg["target_rank-1"]), pm(avg["target_mAP"])]) + " |")
    return "\n".join(lines) + "\n"


def claim_lines(claims: Mapping[str, Any]) -> list[str]:
    """One Markdown bullet per scope: each pair's gap, the seed std and whether the claim holds."""
    lines = []
    for scope, per_pair in claims.items():
        parts = [
            f"{pair} {v['gap']:+.2f} (seed std {v['std']:.2f}, "
            + ("holds)" if v["beats"] else "does not hold)")
            for pair, v in per_pair.items()
        ]
        lines.append(f"- {'average over targets' if scope == 'average' else scope}: " + "; ".join(parts))
    return lines
