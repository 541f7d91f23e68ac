"""Stage ``pretrain``: supervised training on labelled source shards -> a model artifact.

With ``labels: camera`` the same stage trains the camera model used by the evaluation stage's
camera-similarity correction (classes = cameras of the given shards, identities ignored).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import StrictModel
from reidflow.data.index import ShardIndex
from reidflow.data.loader import IndexedImageDataset, make_train_loader
from reidflow.data.opener import LocalOpener
from reidflow.data.sampling import CameraAwareBatchSampler, IdentityBatchSampler
from reidflow.data.transforms import TransformConfig, build_train_transform
from reidflow.errors import ConfigError, DataError
from reidflow.models.reid_model import ModelConfig, build_reid_model
from reidflow.stages.evaluate import dataset_dirs
from reidflow.stages.trained_model import (
    QuickEvalConfig,
    TrainedModel,
    checkpoint_dir,
    device_name,
    quick_eval,
    write_trained_model,
)
from reidflow.store.artifacts import InputArtifact, open_input
from reidflow.store.lineage import RunContext, now_iso
from reidflow.train import distributed as ddp
from reidflow.train.engine import Engine, EngineConfig, seed_everything
from reidflow.train.gate_log import plot_gate_trajectories
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


class PretrainConfig(StrictModel):
    seed: int = 0
    name: str | None = Field(None, description="model name in reports (default: the backbone)")
    labels: Literal["identity", "camera"] = "identity"
    model: dict[str, Any] = Field(default_factory=lambda: {"backbone": "osnet_x0_25"})
    transforms: dict[str, Any] = Field(default_factory=lambda: {"height": 128, "width": 64})
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(name="adam", lr=3.5e-4))
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(epochs=10))
    num_workers: int = Field(2, ge=0)
    target_bn: TargetBNConfig = Field(default_factory=TargetBNConfig)
    eval: QuickEvalConfig = Field(default_factory=QuickEvalConfig)
    combine_all: bool = Field(
        False,
        description="train on every labelled image of the sources (train + query + gallery): DG protocol",
    )
    checkpoint_dir: str | None = Field(None, description="default: <output>.ckpt next to a local output")
    keep_checkpoints: bool = False

    @model_validator(mode="after")
    def _validate_nested(self) -> PretrainConfig:
        ModelConfig.from_mapping({**self.model, "num_classes": 1}, where="pretrain.model")
        TransformConfig.parse(self.transforms, where="pretrain.transforms")
        return self


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
    started = now_iso()
    with ddp.distributed_session():
        return _run(cfg, sources, target, output, ctx, resume, hooks, started)


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
    if not sources:
        raise ConfigError("pretrain: expected at least one --input source=URI (labelled shards)")
    source_inputs = [open_input(f"source{i}", uri) for i, uri in enumerate(sources)]
    target_input = open_input("target", target) if target else None
    source_dirs = [d for art in source_inputs for d in dataset_dirs(art)]
    full = ShardIndex.load(source_dirs)
    train = full.combined_training_rows() if cfg.combine_all else full.filter(split="train")
    labels, label_map = _train_labels(train, cfg.labels)
    num_classes = len(label_map)
    if num_classes < 2:
        raise DataError(f"pretrain: the training split has {num_classes} class(es); need at least 2")
    dist = ddp.current()
    tcfg = TransformConfig.parse(cfg.transforms, where="pretrain.transforms")
    model_cfg = ModelConfig.from_mapping({**cfg.model, "num_classes": num_classes}, where="pretrain.model")
    seed_everything(cfg.seed)  # the random initialization is part of the run: same seed, same weights
    model = build_reid_model(model_cfg)
    opener = LocalOpener(train.root)
    dataset = IndexedImageDataset(train, opener, tcfg.height, tcfg.width, labels=labels)
    sampler = _sampler(cfg, labels, train, dist)
    loader = make_train_loader(
        dataset, sampler, num_workers=cfg.num_workers, pin_memory=device_name(cfg.engine) == "cuda"
    )
    optimizer = build_optimizer(model, cfg.optimizer)
    iters_per_epoch = min(len(sampler), cfg.engine.iters_per_epoch or len(sampler))
    scheduler = build_scheduler(optimizer, cfg.scheduler, iters_per_epoch)
    gate_optimizer = build_gate_optimizer(model, cfg.optimizer)
    gate_scheduler = (
        build_scheduler(gate_optimizer, SchedulerConfig(kind="constant"), iters_per_epoch)
        if gate_optimizer is not None
        else None
    )
    target_batches = _target_batches(cfg, target_input, tcfg)
    method = PretrainMethod(
        model,
        optimizer,
        scheduler,
        cfg.loss,
        num_classes,
        build_train_transform(tcfg),
        target_batches,
        gate_optimizer=gate_optimizer,
        gate_scheduler=gate_scheduler,
        gate_log_every=cfg.engine.log_every,
    )
    ckpt_dir = checkpoint_dir(cfg.checkpoint_dir, output)
    engine = Engine(method, loader, cfg.engine, checkpoint_dir=ckpt_dir, hooks=hooks)
    result = engine.fit(resume=resume)
    if not dist.is_main:
        ddp.barrier()
        return Path(str(output))
    inputs: list[InputArtifact] = [*source_inputs, *([target_input] if target_input else [])]
    name = cfg.name or (model_cfg.backbone if cfg.labels == "identity" else f"camera-{model_cfg.backbone}")
    extra = {
        "name": name,
        "labels": cfg.labels,
        "label_map": label_map if cfg.labels == "camera" else None,
        "num_train_images": len(train),
    }

    def evaluation(directory: Path) -> dict[str, Any]:
        plot_gate_trajectories(result.history, directory / "gate_trajectories.png", "BIN gates over training")
        if not (cfg.eval.enabled and cfg.labels == "identity"):
            return {}
        target_dirs = dataset_dirs(target_input) if target_input else []
        return {
            "eval": quick_eval(model, source_dirs, target_dirs, tcfg, cfg.eval.batch_size, str(engine.device))
        }

    write_trained_model(
        output,
        TrainedModel(model, model_cfg, tcfg, result, str(engine.device), extra),
        stage="pretrain",
        cfg=cfg,
        seed=cfg.seed,
        inputs=inputs,
        ctx=ctx,
        started=started,
        losses=("ce", "triplet", "snr"),
        lr_key="lr/model",
        more_metrics=evaluation,
    )
    if ckpt_dir is not None and not cfg.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    ddp.barrier()
    return Path(str(output))


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
