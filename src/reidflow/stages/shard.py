"""Stage ``shard``: a dataset in its published layout -> WebDataset tars + parquet index + card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from reidflow.config import StrictModel, params_digest
from reidflow.errors import ConfigError
from reidflow.obs.progress import Progress
from reidflow.store.artifacts import open_input, write_artifact
from reidflow.store.lineage import RunContext


class DatasetSource(StrictModel):
    """One entry of the top-level ``datasets:`` section: how to read a raw dataset."""

    reader: str = Field(description="reader name, see `reidflow readers`")
    root: str = Field(description="dataset root (local path), e.g. data/market1501")
    domain: str | None = Field(None, description="domain label; defaults to the dataset name")
    role: str = Field("source", pattern="^(source|target|eval)$")
    options: dict[str, Any] = Field(default_factory=dict, description="reader options")


class ShardConfig(StrictModel):
    shard_max_mb: float = Field(256, gt=0)
    skip_bad: bool = False


def dataset_source(params: dict[str, Any], name: str, source: str = "params.yaml") -> DatasetSource:
    from reidflow.config import section

    datasets = params.get("datasets") or {}
    if name not in datasets:
        raise ConfigError(f"{source}: no dataset {name!r} under 'datasets:' (known: {sorted(datasets)})")
    return section(datasets, name, DatasetSource, source=f"{source}: datasets")


def resolved_params(cfg: ShardConfig, dataset: str, src: DatasetSource) -> dict[str, Any]:
    """What the shard artifact of ``dataset`` records as its params (and digests)."""
    return {"shard": cfg.model_dump(), "dataset": {"name": dataset, **src.model_dump()}}


def run(
    cfg: ShardConfig,
    dataset: str,
    src: DatasetSource,
    output: str | Path,
    raw_uri: str | None = None,
    ctx: RunContext | None = None,
) -> Path:
    from reidflow.data.readers import read_dataset
    from reidflow.data.shards import write_shards

    raw = open_input("raw", raw_uri or src.root, require_artifact=False)
    samples = read_dataset(src.reader, raw.path, domain=src.domain or dataset, **src.options)
    resolved = resolved_params(cfg, dataset, src)
    with write_artifact(
        output,
        kind="shards",
        stage="shard",
        params=resolved,
        params_digest=params_digest(resolved),
        seed=None,
        inputs=[raw],
        ctx=ctx,
    ) as art:
        with Progress(len(samples), f"shard {dataset}", unit="img") as bar:
            result = write_shards(
                samples,
                art.path,
                dataset=dataset,
                root=raw.path,
                shard_max_bytes=int(cfg.shard_max_mb * 2**20),
                skip_bad=cfg.skip_bad,
                progress=bar.callback(),
            )
        art.metrics = _card_metrics(result)
    return Path(str(output))


def _card_metrics(result: Any) -> dict[str, Any]:
    """Headline numbers of the shard run (the full card is in <dataset>/dataset_card.json)."""
    import json

    card = json.loads(Path(result.card_json).read_text())
    return {
        "num_samples": result.num_samples,
        "num_shards": len(result.shards),
        "converted": len(result.converted),
        "skipped": len(result.skipped),
        "splits": card.get("splits", card.get("counts", {})),
    }
