"""Stage ``metabin``: multi-source domain generalization with meta-learned batch-instance norm.

Inputs: labelled source shards (``--input source=URI``, one domain per dataset; with
``meta_batch.domains: camera`` a single source whose cameras act as domains) and, optionally,
unseen target shards (``--input target=URI``) that are only *evaluated* (never read in training:
that is the point of domain generalization). Output: a model artifact like ``pretrain``'s, plus the
learned gates (``gates.json``, ``gates.png``).

Algorithm 1 of MetaBIN (see :mod:`reidflow.train.metabin`): a base step on θ over P×K batches of all
sources, then a meta step on the gates ρ over a domain-balanced batch split into meta-train and
meta-test domains. The meta batch of iteration ``t`` is a pure function of ``(seed, t)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import StrictModel
from reidflow.data.index import ShardIndex
from reidflow.data.loader import IndexedImageDataset
from reidflow.data.meta_batches import DomainBalancedBatches
from reidflow.data.opener import LocalOpener
from reidflow.data.sampling import IdentityBatchSampler
from reidflow.data.transforms import build_train_transform
from reidflow.errors import ConfigError, DataError
from reidflow.models.norms import gate_parameters, gate_statistics
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
    pin_memory,
    training_rows,
)
from reidflow.store.artifacts import open_input
from reidflow.store.lineage import RunContext
from reidflow.train import distributed as ddp
from reidflow.train.engine import EngineConfig, seed_everything
from reidflow.train.gate_log import save_gate_trajectories
from reidflow.train.metabin import CyclicInnerLR, MetaBINMethod, MetaStepConfig, build_metabin_optimizers
from reidflow.train.optim import OptimizerConfig, SchedulerConfig, build_scheduler
from reidflow.train.pretrain import LossConfig

log = logging.getLogger(__name__)

GATED_NORMS = ("metabin", "bin")
LOSS_KEYS = (
    "ce",
    "triplet",
    "snr",
    "mtrain_scatter",
    "mtrain_shuffle",
    "mtrain_triplet",
    "mtrain_ce",
    "mtest_triplet",
    "mtest_ce",
)


def _dg_transforms() -> dict[str, Any]:
    """The DG augmentation (docs/methods/metabin.md): resize, flip, pad 10 + random crop; nothing else."""
    return {
        "height": 256,
        "width": 128,
        "flip_p": 0.5,
        "pad": 10,
        "erasing_p": 0.0,
        "jitter_p": 0.0,
        "autoaugment": False,
    }


class BaseBatchConfig(StrictModel):
    P: int = Field(20, ge=1, description="identities per global base batch (over all sources)")
    K: int = Field(4, ge=1, description="images per identity")


class MetaBatchConfig(StrictModel):
    ids_per_domain: int = Field(4, ge=1)
    K: int = Field(4, ge=1)
    domains: Literal["dataset", "camera"] = Field(
        "dataset", description="what a domain is: each source dataset, or each camera (single-source)"
    )


class InnerLRConfig(StrictModel):
    """β = ρ lr × ratio, the ratio a triangular cycle from ``low`` to ``high`` and back."""

    low: float = Field(1e-3, ge=0)
    high: float = Field(1e-1, ge=0)
    period_epochs: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> InnerLRConfig:
        if self.low > self.high:
            raise ValueError(f"low={self.low} must be <= high={self.high}")
        return self


class MetabinConfig(ReIDTrainingConfig):
    """The shared training fields (:class:`ReIDTrainingConfig`) plus MetaBIN's recipe."""

    section: ClassVar[str] = "metabin"

    name: str | None = Field(None, description="model name in reports (default: <backbone>-metabin)")
    model: dict[str, Any] = Field(default_factory=lambda: {"backbone": "osnet_x0_25", "norm": "metabin"})
    transforms: dict[str, Any] = Field(default_factory=_dg_transforms)
    sampler: BaseBatchConfig = Field(default_factory=BaseBatchConfig)
    meta_batch: MetaBatchConfig = Field(default_factory=MetaBatchConfig)
    meta: MetaStepConfig = Field(default_factory=MetaStepConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(
            name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, bias_lr_factor=2.0
        )
    )
    scheduler: SchedulerConfig = Field(
        default_factory=lambda: SchedulerConfig(
            kind="multistep", unit="epoch", warmup=10, warmup_start_factor=0.01, milestones=[40, 70]
        )
    )
    rho_lr_factor: float = Field(10.0, gt=0, description="gate lr = rho_lr_factor × optimizer.lr (constant)")
    inner_lr: InnerLRConfig = Field(default_factory=InnerLRConfig)
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(epochs=100))

    @model_validator(mode="after")
    def _single_source_ce(self) -> MetabinConfig:
        """Cameras as domains (single source): the authors add CE to the meta losses unless told otherwise."""
        if self.meta_batch.domains == "camera" and "ce_weight" not in self.meta.model_fields_set:
            self.meta = self.meta.model_copy(update={"ce_weight": 1.0})
        return self

    @model_validator(mode="after")
    def _gated_norm(self) -> MetabinConfig:
        model = self.model_config_for(1)
        if model.norm not in GATED_NORMS:
            raise ValueError(
                f"model.norm={model.norm!r}: MetaBIN meta-learns the gates of gated norm layers; "
                f"expected one of {list(GATED_NORMS)} (train other norms with `reidflow pretrain`)"
            )
        return self


def run(
    cfg: MetabinConfig,
    sources: list[str],
    targets: list[str],
    output: str | Path,
    ctx: RunContext | None = None,
    resume: bool = False,
    hooks: tuple[Any, ...] = (),
) -> Path:
    """Train and write the model artifact; under torchrun every rank trains and rank 0 writes."""
    return distributed_run(lambda started: _run(cfg, sources, targets, output, ctx, resume, hooks, started))


def meta_domains(index: ShardIndex, kind: str) -> tuple[np.ndarray, list[str]]:
    """Domain id of every row and the domain names: each dataset, or each ``dataset/c<camera>``."""
    if kind == "dataset":
        return index.domain_ids, index.domain_names
    return index.camera_groups()


def _run(
    cfg: MetabinConfig,
    sources: list[str],
    targets: list[str],
    output: str | Path,
    ctx: RunContext | None,
    resume: bool,
    hooks: tuple[Any, ...],
    started: str,
) -> Path:
    source_inputs, source_dirs = open_sources("metabin", sources)
    target_inputs = [open_input(f"target{i}", uri) for i, uri in enumerate(targets)]
    train = training_rows(source_dirs, cfg.combine_all)
    labels, label_map = train.global_pids()
    if len(label_map) < 2:
        raise DataError(f"metabin: the training split has {len(label_map)} identities; need at least 2")
    domains, domain_names = meta_domains(train, cfg.meta_batch.domains)
    _check_domain_count(cfg, domain_names)
    dist = ddp.current()
    _check_meta_batch(cfg, dist.world_size)
    tcfg = cfg.transform_config()
    model_cfg = cfg.model_config_for(len(label_map))
    seed_everything(cfg.seed)  # the random initialization is part of the run: same seed, same weights
    model = build_reid_model(model_cfg)
    dataset = IndexedImageDataset(train, LocalOpener(train.root), tcfg.height, tcfg.width, labels=labels)
    sampler = IdentityBatchSampler(
        labels, cfg.sampler.P, cfg.sampler.K, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size
    )
    meta_batches = DomainBalancedBatches(
        dataset,
        labels,
        domains,
        cfg.meta_batch.ids_per_domain,
        cfg.meta_batch.K,
        seed=cfg.seed + 1,  # a different stream from the base sampler's
        rank=dist.rank,
        world_size=dist.world_size,
        num_workers=cfg.num_workers,
        pin_memory=pin_memory(cfg),
    )
    iters_per_epoch = epoch_length(cfg, sampler)
    rho_lr = cfg.rho_lr_factor * cfg.optimizer.lr
    theta_opt, rho_opt = build_metabin_optimizers(model, cfg.optimizer, rho_lr)
    inner = CyclicInnerLR(
        rho_lr,
        cfg.inner_lr.low,
        cfg.inner_lr.high,
        period_iters=max(2, round(cfg.inner_lr.period_epochs * iters_per_epoch)),
    )
    method = MetaBINMethod(
        model,
        theta_opt,
        rho_opt,
        build_scheduler(theta_opt, cfg.scheduler, iters_per_epoch),
        build_scheduler(rho_opt, SchedulerConfig(kind="constant"), iters_per_epoch),
        cfg.loss,
        len(label_map),
        build_train_transform(tcfg),
        meta_batches,
        inner,
        cfg.meta,
        seed=cfg.seed,
        gate_log_every=cfg.engine.log_every,
    )
    log.info(
        "metabin: %d images, %d identities, %d meta domains %s, %d gated layers",
        len(train),
        len(label_map),
        len(domain_names),
        domain_names,
        len(gate_parameters(model)),
    )
    target_dirs = [d for art_in in target_inputs for d in dataset_dirs(art_in)]

    def evaluate() -> dict[str, Any]:
        device = str(next(model.parameters()).device)
        return quick_eval(model, source_dirs, target_dirs, tcfg, cfg.eval.batch_size, device)

    def write(fitted: Fitted) -> None:
        extra = {
            "name": cfg.name or f"{model_cfg.backbone}-{model_cfg.norm}",
            "labels": "identity",
            "label_map": None,
            "num_train_images": len(train),
            "meta_domains": domain_names,
        }

        def gates_and_evaluation(directory: Path) -> dict[str, Any]:
            more: dict[str, Any] = {"gates": _save_gates(directory, model)}
            title = "MetaBIN gates over training"
            save_gate_trajectories(fitted.result.history, directory, title)
            if cfg.eval.enabled:
                more["eval"] = evaluate()
            return more

        write_trained_model(
            output,
            TrainedModel(model, model_cfg, tcfg, fitted.result, fitted.device, extra),
            stage="metabin",
            cfg=cfg,
            seed=cfg.seed,
            inputs=[*source_inputs, *target_inputs],
            ctx=ctx,
            started=started,
            losses=LOSS_KEYS,
            lr_key="lr/theta",
            more_metrics=gates_and_evaluation,
            eval_history=fitted.eval_history,
        )

    return fit(
        "metabin",
        cfg,
        method,
        dataset,
        sampler,
        output,
        write=write,
        resume=resume,
        hooks=hooks,
        evaluate=evaluate if cfg.eval.enabled else None,
        eval_every_epochs=cfg.eval.every_epochs,
    )


def _check_domain_count(cfg: MetabinConfig, domain_names: list[str]) -> None:
    needed = cfg.meta.n_mtrain + 1
    if len(domain_names) < needed:
        hint = (
            "give more --input source=URI datasets or set metabin.meta_batch.domains=camera (single-source mode)"
            if cfg.meta_batch.domains == "dataset"
            else "the sources have too few cameras"
        )
        raise ConfigError(
            f"metabin: meta.n_mtrain={cfg.meta.n_mtrain} needs at least {needed} domains (meta-train + "
            f"meta-test), found {len(domain_names)} {domain_names}; {hint}"
        )


def _check_meta_batch(cfg: MetabinConfig, world_size: int) -> None:
    """Each rank's meta batch needs >= 2 ids per domain (shuffle-loss negatives) and >= 2 images per id."""
    mb = cfg.meta_batch
    if mb.K < 2:
        raise ConfigError(f"metabin.meta_batch.K={mb.K}: the triplet losses need >= 2 images per identity")
    if mb.ids_per_domain % world_size or mb.ids_per_domain // world_size < 2:
        raise ConfigError(
            f"metabin.meta_batch.ids_per_domain={mb.ids_per_domain} with {world_size} process(es): expected a "
            f"multiple of the process count giving >= 2 identities per domain on every process (the shuffle "
            f"loss needs a same-domain negative); use ids_per_domain >= {2 * world_size}"
        )


def _save_gates(directory: Path, model: Any) -> dict[str, Any]:
    """``gates.json`` (per-layer ρ statistics) and ``gates.png``; returns the summary for metrics."""
    from reidflow.eval.plots import gate_profile

    layers = gate_statistics(model)
    (directory / "gates.json").write_text(json.dumps(layers, indent=1) + "\n")
    gate_profile(layers, directory / "gates.png", "learned BN/IN gates")
    channels = sum(int(g["channels"]) for g in layers)
    mean = sum(float(g["mean"]) * int(g["channels"]) for g in layers) / max(channels, 1)
    return {"layers": len(layers), "channels": channels, "mean_rho": round(mean, 4)}
