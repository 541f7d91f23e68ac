"""Stage ``pretrain``: supervised training on labelled source shards -> a model artifact.

With ``labels: camera`` the same stage trains the camera model used by the evaluation stage's
camera-similarity correction (classes = cameras of the given shards, identities ignored).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from reidflow.config import StrictModel
from reidflow.data.index import ShardIndex
from reidflow.data.loader import IndexedImageDataset
from reidflow.data.opener import LocalOpener
from reidflow.data.sampling import CameraAwareBatchSampler, IdentityBatchSampler
from reidflow.data.transforms import TransformConfig, build_train_transform
from reidflow.errors import ConfigError, DataError
from reidflow.models.reid_model import build_reid_model
from reidflow.stages.evaluate import dataset_dirs
from reidflow.stages.trained_model import TrainedModel, quick_eval, write_trained_model
from reidflow.stages.training import (
    Fitted,
    ReIDTrainingConfig,
    distributed_run,
    epoch_length,
    fit,
    open_sources,
    training_rows,
)
from reidflow.store.artifacts import InputArtifact, open_input
from reidflow.store.lineage import RunContext
from reidflow.train import distributed as ddp
from reidflow.train.engine import seed_everything
from reidflow.train.gate_log import save_gate_trajectories
from reidflow.train.optim import (
    OptimizerConfig,
    SchedulerConfig,
    build_gate_optimizer,
    build_optimizer,
    build_scheduler,
)
from reidflow.train.pretrain import LossConfig, PretrainMethod, TargetBatches

log = logging.getLogger(__name__)


class SamplerConfig(StrictModel):
    kind: Literal["identity", "camera"] = "identity"
    P: int = Field(16, ge=1, description="identities per global batch")
    K: int = Field(4, ge=1, description="images per identity")


class TargetBNConfig(StrictModel):
    enabled: bool = False
    batch_size: int = Field(32, ge=2)


class PretrainConfig(ReIDTrainingConfig):
    """The shared training fields (:class:`ReIDTrainingConfig`) plus the supervised recipe."""

    section: ClassVar[str] = "pretrain"

    labels: Literal["identity", "camera"] = "identity"
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(name="adam", lr=3.5e-4))
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    target_bn: TargetBNConfig = Field(default_factory=TargetBNConfig)


def _train_labels(index: ShardIndex, labels: str) -> tuple[np.ndarray, dict[str, int]]:
    if labels == "identity":
        return index.global_pids()
    ids, names = index.camera_groups()
    return ids, {name: i for i, name in enumerate(names)}


def run(
    cfg: PretrainConfig,
    sources: list[str],
    target: str | None,
    output: str | Path,
    ctx: RunContext | None = None,
    resume: bool = False,
    hooks: tuple[Any, ...] = (),
) -> Path:
    """Train and write the model artifact. Under torchrun (WORLD_SIZE > 1) every rank trains its part
    of each global batch through DDP and rank 0 alone writes the artifact."""
    return distributed_run(lambda started: _run(cfg, sources, target, output, ctx, resume, hooks, started))


def _run(
    cfg: PretrainConfig,
    sources: list[str],
    target: str | None,
    output: str | Path,
    ctx: RunContext | None,
    resume: bool,
    hooks: tuple[Any, ...],
    started: str,
) -> Path:
    source_inputs, source_dirs = open_sources("pretrain", sources)
    target_input = open_input("target", target) if target else None
    train = training_rows(source_dirs, cfg.combine_all)
    labels, label_map = _train_labels(train, cfg.labels)
    num_classes = len(label_map)
    if num_classes < 2:
        raise DataError(f"pretrain: the training split has {num_classes} class(es); need at least 2")
    tcfg = cfg.transform_config()
    model_cfg = cfg.model_config_for(num_classes)
    seed_everything(cfg.seed)  # the random initialization is part of the run: same seed, same weights
    model = build_reid_model(model_cfg)
    dataset = IndexedImageDataset(train, LocalOpener(train.root), tcfg.height, tcfg.width, labels=labels)
    sampler = _sampler(cfg, labels, train, ddp.current())
    iters_per_epoch = epoch_length(cfg, sampler)
    optimizer = build_optimizer(model, cfg.optimizer)
    gate_optimizer = build_gate_optimizer(model, cfg.optimizer)
    method = PretrainMethod(
        model,
        optimizer,
        build_scheduler(optimizer, cfg.scheduler, iters_per_epoch),
        cfg.loss,
        num_classes,
        build_train_transform(tcfg),
        _target_batches(cfg, target_input, tcfg),
        gate_optimizer=gate_optimizer,
        gate_scheduler=(
            build_scheduler(gate_optimizer, SchedulerConfig(kind="constant"), iters_per_epoch)
            if gate_optimizer is not None
            else None
        ),
        gate_log_every=cfg.engine.log_every,
    )
    evaluates = cfg.eval.enabled and cfg.labels == "identity"
    target_dirs = dataset_dirs(target_input) if target_input else []

    def evaluate() -> dict[str, Any]:
        device = str(next(model.parameters()).device)
        return quick_eval(model, source_dirs, target_dirs, tcfg, cfg.eval.batch_size, device)

    def write(fitted: Fitted) -> None:
        name = cfg.name or (
            model_cfg.backbone if cfg.labels == "identity" else f"camera-{model_cfg.backbone}"
        )
        extra = {
            "name": name,
            "labels": cfg.labels,
            "label_map": label_map if cfg.labels == "camera" else None,
            "num_train_images": len(train),
        }

        def evaluation(directory: Path) -> dict[str, Any]:
            title = "BIN gates over training"
            save_gate_trajectories(fitted.result.history, directory, title)
            return {"eval": evaluate()} if evaluates else {}

        inputs: list[InputArtifact] = [*source_inputs, *([target_input] if target_input else [])]
        write_trained_model(
            output,
            TrainedModel(model, model_cfg, tcfg, fitted.result, fitted.device, extra),
            stage="pretrain",
            cfg=cfg,
            seed=cfg.seed,
            inputs=inputs,
            ctx=ctx,
            started=started,
            losses=("ce", "triplet", "snr"),
            lr_key="lr/model",
            more_metrics=evaluation,
            eval_history=fitted.eval_history,
        )

    return fit(
        "pretrain",
        cfg,
        method,
        dataset,
        sampler,
        output,
        write=write,
        resume=resume,
        hooks=hooks,
        evaluate=evaluate if evaluates else None,
        eval_every_epochs=cfg.eval.every_epochs,
    )


def _sampler(cfg: PretrainConfig, labels: np.ndarray, index: ShardIndex, dist: Any) -> Any:
    P, K = cfg.sampler.P, cfg.sampler.K
    if cfg.sampler.kind == "camera":
        return CameraAwareBatchSampler(
            labels, index.camids, P, K, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size
        )
    return IdentityBatchSampler(labels, P, K, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)


def _target_batches(
    cfg: PretrainConfig, target: InputArtifact | None, tcfg: TransformConfig
) -> TargetBatches | None:
    if not cfg.target_bn.enabled:
        return None
    if target is None:
        raise ConfigError("pretrain.target_bn.enabled needs --input target=URI (unlabelled target shards)")
    index = ShardIndex.load(dataset_dirs(target)).filter(split="train")
    ds = IndexedImageDataset(
        index, LocalOpener(index.root), tcfg.height, tcfg.width, labels=np.zeros(len(index), dtype=np.int64)
    )
    return TargetBatches(ds.__getitem__, len(ds), cfg.target_bn.batch_size, cfg.seed)
