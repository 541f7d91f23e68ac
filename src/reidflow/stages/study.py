"""What the evidence studies (``dg-benchmark``, ``sda-study``, ``mmt-study``) share.

- :func:`prepare_domains`: the study's own synthetic domains, generated and sharded under its workdir;
- :func:`reuse_or_run`: a step's artifact is kept when it was made from the same params by this code
  from the current upstream artifacts (a killed study resumes where it stopped);
- :func:`mean_std` / :func:`pm`: the cells of the tables (population std over seeds);
- :func:`retrieval`: query-vs-gallery mAP and rank-1 of one model on one dataset, no re-ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reidflow.config import params_digest
from reidflow.store.artifacts import is_current, read_lineage
from reidflow.store.lineage import RunContext

log = logging.getLogger(__name__)


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


def target_scores(model_dir: Path, shards: Path, device: str, batch_size: int) -> dict[str, float]:
    """``retrieval`` of the model artifact ``model_dir`` on the query/gallery of ``shards``."""
    from reidflow.data.index import ShardIndex
    from reidflow.eval.features import extract_with_meta
    from reidflow.models.artifact import load_model_artifact

    [ddir] = dataset_dirs(shards)
    index = ShardIndex.load(ddir).filter(split=["query", "gallery"])
    model, meta = load_model_artifact(Path(model_dir), device)
    feats = extract_with_meta(model, meta, index, batch_size=batch_size, device=device)
    return retrieval(feats, np.asarray(index.splits))
