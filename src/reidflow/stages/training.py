"""The one path every training stage (pretrain, metabin, sda, mmt) takes around its :class:`Method`.

A training stage is its config (a :class:`TrainingStageConfig`, or :class:`ReIDTrainingConfig` when
it trains a re-ID model), its Method, and a ``run()`` of a few lines::

    def run(cfg, sources, output, ctx=None, resume=False, hooks=()):
        return distributed_run(lambda started: _run(cfg, sources, output, ctx, resume, hooks, started))

    def _run(...):
        source_inputs, source_dirs = open_sources("mystage", sources)
        train = training_rows(source_dirs, cfg.combine_all)
        seed_everything(cfg.seed)                       # before building anything random
        method = MyMethod(...)                          # schedulers sized with epoch_length(cfg, sampler)
        return fit("mystage", cfg, method, dataset, sampler, output, resume=resume, hooks=hooks,
                   write=lambda fitted: ...)          # rank 0 writes the artifact

:func:`fit` owns the rest: the loader, the engine and its checkpoint directory, periodic evaluation
(``eval.every_epochs``), the artifact write on rank 0 only, checkpoint cleanup and the final barrier.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator
from torch.utils.data import Dataset

from reidflow.config import StrictModel
from reidflow.data.index import ShardIndex
from reidflow.data.loader import make_train_loader
from reidflow.data.transforms import TransformConfig
from reidflow.errors import ConfigError
from reidflow.models.reid_model import ModelConfig
from reidflow.stages.trained_model import QuickEvalConfig, checkpoint_dir, device_name
from reidflow.store.artifacts import InputArtifact, open_input
from reidflow.store.lineage import now_iso
from reidflow.train import distributed as ddp
from reidflow.train.engine import Engine, EngineConfig, Method, TrainResult
from reidflow.train.hooks import PeriodicEvalHook

log = logging.getLogger(__name__)


class TrainingStageConfig(StrictModel):
    """Fields every training stage has. Subclasses re-declare a field to change its default and set
    ``section`` (the params section named in validation errors)."""

    section: ClassVar[str] = "training"

    seed: int = 0
    name: str | None = Field(None, description="name in reports (default: chosen by the stage)")
    transforms: dict[str, Any] = Field(default_factory=lambda: {"height": 128, "width": 64})
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(epochs=10))
    num_workers: int = Field(2, ge=0)
    combine_all: bool = Field(
        False,
        description="train on every labelled image of the sources (train + query + gallery): DG protocol",
    )
    checkpoint_dir: str | None = Field(None, description="default: <output>.ckpt next to a local output")
    keep_checkpoints: bool = False

    @model_validator(mode="after")
    def _validate_transforms(self) -> TrainingStageConfig:
        self.transform_config()
        return self

    def transform_config(self) -> TransformConfig:
        return TransformConfig.parse(self.transforms, where=f"{self.section}.transforms")


class ReIDTrainingConfig(TrainingStageConfig):
    """A stage that trains one re-ID model: its ``model`` mapping and the quick evaluation."""

    model: dict[str, Any] = Field(default_factory=lambda: {"backbone": "osnet_x0_25"})
    eval: QuickEvalConfig = Field(default_factory=QuickEvalConfig)

    @model_validator(mode="after")
    def _validate_model(self) -> ReIDTrainingConfig:
        self.model_config_for(1)
        return self

    def model_config_for(self, num_classes: int) -> ModelConfig:
        """The validated model config with ``num_classes`` outputs."""
        return ModelConfig.from_mapping(
            {**self.model, "num_classes": num_classes}, where=f"{self.section}.model"
        )


def distributed_run(body: Callable[[str], Path]) -> Path:
    """Run ``body(started)`` inside a (torchrun-aware) distributed session; ``started`` is now (ISO)."""
    started = now_iso()
    with ddp.distributed_session():
        return body(started)


def open_sources(
    stage: str, uris: Sequence[str], name: str = "source"
) -> tuple[list[InputArtifact], list[Path]]:
    """Open ``--input source=URI`` artifacts (at least one) and list their dataset directories."""
    from reidflow.stages.evaluate import dataset_dirs

    if not uris:
        raise ConfigError(f"{stage}: expected at least one --input {name}=URI (labelled shards)")
    inputs = [open_input(f"{name}{i}", uri) for i, uri in enumerate(uris)]
    return inputs, [d for art in inputs for d in dataset_dirs(art)]


def training_rows(dataset_dirs: Sequence[Path], combine_all: bool) -> ShardIndex:
    """The rows a stage trains on: the train split, or with ``combine_all`` every labelled image."""
    full = ShardIndex.load(list(dataset_dirs))
    return full.combined_training_rows() if combine_all else full.filter(split="train")


def epoch_length(cfg: TrainingStageConfig, sampler: Any) -> int:
    """Iterations per epoch the engine will run with ``sampler`` (what schedules are built on)."""
    return cfg.engine.epoch_length(len(sampler))


def pin_memory(cfg: TrainingStageConfig) -> bool:
    return device_name(cfg.engine) == "cuda"


@dataclass
class Fitted:
    """What :func:`fit` hands the stage's ``write`` callback (rank 0 only)."""

    engine: Engine
    result: TrainResult
    eval_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def device(self) -> str:
        return str(self.engine.device)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The top-level numbers of a (nested) metrics dict: what a periodic-eval record keeps."""
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def periodic_eval_hook(
    every_epochs: int | None, iters_per_epoch: int, evaluate: Callable[[], Mapping[str, Any]] | None
) -> PeriodicEvalHook | None:
    """A hook running ``evaluate()`` every ``every_epochs`` epochs (not at the end: the stage evaluates
    its final model itself), or None when either is unset."""
    if evaluate is None or not every_epochs:
        return None
    return PeriodicEvalHook(
        lambda _: scalar_metrics(evaluate()), every_epochs * iters_per_epoch, at_end=False
    )


def fit(
    stage: str,
    cfg: TrainingStageConfig,
    method: Method,
    dataset: Dataset,
    sampler: Any,
    output: str | Path,
    *,
    write: Callable[[Fitted], None],
    resume: bool = False,
    hooks: Sequence[Any] = (),
    evaluate: Callable[[], Mapping[str, Any]] | None = None,
    eval_every_epochs: int | None = None,
) -> Path:
    """Train ``method`` on ``dataset`` batched by ``sampler`` through the engine, then let rank 0
    ``write`` the artifact; remove the checkpoints afterwards unless ``cfg.keep_checkpoints``.

    ``evaluate()`` (metrics of the model as it is now) runs every ``eval_every_epochs`` epochs; its
    records reach ``write`` as ``Fitted.eval_history``.
    """
    loader = make_train_loader(dataset, sampler, num_workers=cfg.num_workers, pin_memory=pin_memory(cfg))
    ckpt_dir = checkpoint_dir(cfg.checkpoint_dir, output)
    periodic = periodic_eval_hook(eval_every_epochs, epoch_length(cfg, sampler), evaluate)
    all_hooks = [*hooks, *([periodic] if periodic is not None else [])]
    # the resolved params go into every checkpoint: --resume refuses a run whose training params changed
    params = cfg.model_dump(mode="json")
    engine = Engine(method, loader, cfg.engine, checkpoint_dir=ckpt_dir, hooks=all_hooks, params=params)
    result = engine.fit(resume=resume)
    if ddp.current().is_main:
        write(Fitted(engine, result, periodic.as_dicts() if periodic is not None else []))
        if not cfg.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        log.info("%s: wrote %s", stage, output)
    ddp.barrier()
    return Path(str(output))
