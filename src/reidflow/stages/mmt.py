"""Stage ``mmt``: MMT+ (or the original MMT) adaptation of two pretrained models to an unlabelled target.

Inputs: ``model`` twice (two ``pretrain`` artifacts, e.g. two seeds: the two nets), ``source`` (the
labelled shards they were pretrained on; not needed in ``method.mode: mmt``) and ``target`` (shards
whose train split is used without labels; its identities feed only the pseudo-label purity / NMI /
ARI). Output: a model artifact that ``evaluate`` reads as it is: the chosen mean net (``export``),
DSBN folded to its target branch, the classifier over source ids + the last epoch's clusters.
``metrics.json`` holds the per-epoch clustering record; ``pseudo_labels.png`` plots it.

The training itself is :class:`reidflow.train.mmt.MMTMethod`; the batches pair P×K source images
(P identities) with P×K target images (P pseudo identities of the current epoch).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset

from reidflow.data.index import ShardIndex
from reidflow.data.loader import IndexedImageDataset
from reidflow.data.opener import LocalOpener
from reidflow.data.transforms import build_eval_transform, build_train_transform
from reidflow.errors import ConfigError, DataError
from reidflow.models.artifact import load_model_artifact
from reidflow.models.norms import fold_dsbn
from reidflow.models.reid_model import ModelConfig
from reidflow.stages.evaluate import dataset_dirs
from reidflow.stages.trained_model import TrainedModel, write_trained_model
from reidflow.stages.training import (
    Fitted,
    TrainingStageConfig,
    distributed_run,
    fit,
    open_sources,
    training_rows,
)
from reidflow.store.artifacts import open_input
from reidflow.store.lineage import RunContext
from reidflow.train import distributed as ddp
from reidflow.train.bn_refresh import recompute_target_bn
from reidflow.train.engine import EngineConfig, seed_everything
from reidflow.train.mmt import MMTConfig, MMTMethod
from reidflow.train.optim import OptimizerConfig


class MMTStageConfig(TrainingStageConfig):
    section: ClassVar[str] = "mmt"

    method: MMTConfig = Field(default_factory=MMTConfig)
    P: int = Field(16, ge=1, description="identities (and pseudo identities) per global batch")
    K: int = Field(4, ge=1, description="images per identity")
    iters_per_epoch: int = Field(200, ge=1)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="adam", lr=3.5e-4, weight_decay=5e-4)
    )
    feature_batch_size: int = Field(128, ge=1, description="batch of the per-epoch target feature pass")
    export: Literal["mean1", "mean2", "both"] = Field(
        "mean1", description="the mean net written; both: mean1 to the output, mean2 to <output>-mean2"
    )
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(epochs=40))
    transforms: dict[str, Any] = Field(
        default_factory=lambda: {"height": 128, "width": 64, "autoaugment": False, "erasing_p": 0.5}
    )


class PairedDomains(Dataset):
    """Item ``s * num_target + t``: source image ``s`` and target image ``t`` (or target ``t`` alone)."""

    def __init__(self, source: IndexedImageDataset | None, target: IndexedImageDataset) -> None:
        self.source, self.target = source, target

    def __len__(self) -> int:
        return (len(self.source) if self.source is not None else 1) * len(self.target)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, t = divmod(int(i), len(self.target))
        item = {"target_image": self.target[t]["image"], "target_index": t}
        if self.source is not None:
            src = self.source[s]
            item.update(source_image=src["image"], source_pid=src["pid"])
        return item


class PseudoIdentitySampler:
    """Global batches of P source ids × K images paired with P clusters × K images, drawn from
    ``(seed, epoch)`` and the epoch's pseudo labels (:meth:`set_labels`); rank r takes the r-th slice."""

    def __init__(
        self,
        source_pids: np.ndarray | None,
        num_target: int,
        P: int,
        K: int,
        iters: int,
        seed: int,
        dist: Any,
    ) -> None:
        if (P * K) % dist.world_size:
            raise ConfigError(f"mmt: P×K = {P * K} must be divisible by the {dist.world_size} processes")
        self.source_pids = source_pids
        self.num_target = num_target
        self.P, self.K, self.iters, self.seed = P, K, iters, seed
        self.rank, self.world = dist.rank, dist.world_size
        self.labels = np.full(num_target, -1, dtype=np.int64)
        self.epoch, self._skip = 0, 0

    def set_labels(self, labels: np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, num_batches: int) -> None:
        self._skip = num_batches

    def __len__(self) -> int:
        return self.iters

    def _pk(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        groups = np.unique(labels[labels >= 0])
        chosen = rng.choice(groups, self.P, replace=len(groups) < self.P)
        return np.concatenate([rng.choice(np.flatnonzero(labels == g), self.K) for g in chosen])

    def __iter__(self) -> Iterator[list[int]]:
        if not (self.labels >= 0).any():
            raise DataError("mmt: the pseudo-identity sampler has no clustered target sample")
        rng = np.random.default_rng((self.seed, self.epoch))
        share = self.P * self.K // self.world
        start, self._skip = self._skip, 0
        for b in range(self.iters):
            targets = self._pk(rng, self.labels)
            sources = (
                self._pk(rng, self.source_pids) if self.source_pids is not None else np.zeros_like(targets)
            )
            if b < start:
                continue
            pairs = sources * self.num_target + targets
            yield pairs[self.rank * share : (self.rank + 1) * share].tolist()


def export_targets(export: str, output: str | Path) -> list[tuple[str, str | Path]]:
    """(mean net, destination URI) pairs: ``both`` writes mean2 beside the output, as ``<output>-mean2``."""
    if export != "both":
        return [(export, output)]
    return [("mean1", output), ("mean2", f"{str(output).rstrip('/')}-mean2")]


def _load_nets(model_dirs: list[Path], cfg: MMTStageConfig) -> tuple[list[Any], ModelConfig]:
    tcfg = cfg.transform_config()
    nets, metas = [], []
    for d in model_dirs:
        net, meta = load_model_artifact(d)
        size = (meta["input"]["height"], meta["input"]["width"])
        if size != (tcfg.height, tcfg.width):
            raise ConfigError(
                f"mmt.transforms: height×width {tcfg.height}×{tcfg.width} differ from the model {d}'s "
                f"input {size[0]}×{size[1]}"
            )
        nets.append(net.train())
        metas.append(meta)
    model_cfg = ModelConfig.from_mapping({**metas[0]["model"], "pretrained": None}, where="model")
    return nets, model_cfg


def run(
    cfg: MMTStageConfig,
    models: list[str],
    sources: list[str],
    target: str | None,
    output: str | Path,
    ctx: RunContext | None = None,
    resume: bool = False,
    hooks: tuple[Any, ...] = (),
) -> Path:
    """Adapt and write the model artifact (rank 0 writes; every rank trains under torchrun)."""
    return distributed_run(
        lambda started: _run(cfg, models, sources, target, output, ctx, resume, hooks, started)
    )


def _run(
    cfg: MMTStageConfig,
    models: list[str],
    sources: list[str],
    target: str | None,
    output: str | Path,
    ctx: RunContext | None,
    resume: bool,
    hooks: tuple[Any, ...],
    started: str,
) -> Path:
    mcfg = cfg.method
    if len(models) != 2:
        raise ConfigError(f"mmt: expected exactly two --input model=URI (the two nets), got {len(models)}")
    if target is None:
        raise ConfigError("mmt: expected --input target=URI (unlabelled target shards)")
    model_inputs = [open_input(f"model{i}", uri) for i, uri in enumerate(models, start=1)]
    target_input = open_input("target", target)
    source_inputs, source_dirs = open_sources("mmt", sources) if mcfg.use_source else ([], [])
    tcfg = cfg.transform_config()
    target_rows = ShardIndex.load(dataset_dirs(target_input)).filter(split="train")
    if len(target_rows) < mcfg.cluster.min_samples:
        raise DataError(
            f"mmt: the target train split has {len(target_rows)} images, fewer than "
            f"method.cluster.min_samples={mcfg.cluster.min_samples}"
        )
    # evaluation of the pseudo labels only; none for a target whose identities are unpublished (pid -1)
    true_ids = None if bool((np.asarray(target_rows.pids) < 0).all()) else target_rows.global_pids()[0]
    target_ds = IndexedImageDataset(
        target_rows, LocalOpener(target_rows.root), tcfg.height, tcfg.width, labels=np.zeros(len(target_rows))
    )
    source_ds, source_pids, num_source = None, None, 0
    if mcfg.use_source:
        train = training_rows(source_dirs, cfg.combine_all)
        source_pids, label_map = train.global_pids()
        num_source = len(label_map)
        source_ds = IndexedImageDataset(
            train, LocalOpener(train.root), tcfg.height, tcfg.width, labels=source_pids
        )
    seed_everything(cfg.seed)
    nets, model_cfg = _load_nets([art.path for art in model_inputs], cfg)
    dist = ddp.current()
    sampler = PseudoIdentitySampler(
        source_pids, len(target_ds), cfg.P, cfg.K, cfg.iters_per_epoch, cfg.seed, dist
    )
    eval_tf = build_eval_transform(tcfg)

    def target_images() -> Iterator[torch.Tensor]:
        loader = DataLoader(target_ds, batch_size=cfg.feature_batch_size, shuffle=False, num_workers=0)
        for batch in loader:
            yield eval_tf(batch["image"])

    method = MMTMethod(
        nets[0],
        nets[1],
        mcfg,
        cfg.optimizer,
        build_train_transform(tcfg),
        target_images,
        len(target_ds),
        num_source,
        target_true_labels=true_ids,
        target_camids=np.asarray(target_rows.camids),
        on_labels=sampler.set_labels,
    )

    def write(fitted: Fitted) -> None:
        for which, dest in export_targets(cfg.export, output):
            _write_mean_net(which, dest, fitted)

    def _write_mean_net(which: str, dest: str | Path, fitted: Fitted) -> None:
        net = copy.deepcopy(method.means[0 if which == "mean1" else 1]).eval()
        fold_dsbn(net)
        if mcfg.refresh_target_bn:  # on the folded copy: plain BNs, so rank 0 needs no other process
            recompute_target_bn(net, target_images(), torch.device(fitted.device))
        net = net.cpu().eval()
        for p in net.parameters():
            p.requires_grad_(True)
        out_cfg = model_cfg.model_copy(
            update={
                "classifier": mcfg.classifier,
                "classifier_scale": mcfg.classifier_scale,
                "classifier_margin": mcfg.classifier_margin,
                "num_classes": int(net.classifier.weight.shape[0]),
            }
        )
        name = cfg.name or f"{mcfg.mode}-{model_cfg.backbone}"
        extra = {
            "name": name if which == "mean1" or cfg.export != "both" else f"{name}-{which}",
            "method": mcfg.mode,
            "exported": which,
            "num_source_ids": num_source,
            "num_clusters": method.num_clusters,
            "num_target_train_images": len(target_ds),
        }

        def clustering(directory: Path) -> dict[str, Any]:
            _plot_clustering(method.cluster_history, directory / "pseudo_labels.png")
            (directory / "pseudo_labels.json").write_text(json.dumps(method.cluster_history, indent=1) + "\n")
            return {"pseudo_labels": method.cluster_history}

        write_trained_model(
            dest,
            TrainedModel(net, out_cfg, tcfg, fitted.result, fitted.device, extra),
            stage="mmt",
            cfg=cfg,
            seed=cfg.seed,
            inputs=[*model_inputs, *source_inputs, target_input],
            ctx=ctx,
            started=started,
            losses=("ce", "soft_ce", "triplet", "soft_triplet", "moco"),
            lr_key="lr/net1",
            more_metrics=clustering,
        )

    return fit(
        "mmt",
        cfg,
        method,
        PairedDomains(source_ds, target_ds),
        sampler,
        output,
        write=write,
        resume=resume,
        hooks=hooks,
    )


def _plot_clustering(history: list[dict[str, Any]], out: Path) -> None:
    """Clusters and outliers per epoch, and purity / NMI / ARI where the target has identities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    epochs = [r["epoch"] for r in history]
    for key in ("clusters", "outliers"):
        left.plot(epochs, [r[key] for r in history], marker="o", label=key)
    for key in ("purity", "nmi", "ari"):
        if history and key in history[0]:
            right.plot(epochs, [r[key] for r in history], marker="o", label=key)
    for ax, title in ((left, "pseudo identities"), (right, "pseudo-label quality")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
