"""MMT / MMT+ adaptation (Ge et al. 2020; the VisDA-2020 runner-up's MMT+), a Method of the one engine.

State: two nets (from two source-pretraining seeds), their EMA mean nets (:mod:`reidflow.train.ema`),
one MoCo queue per net (MMT+), and the target pseudo labels of the current epoch.

Every epoch (``on_epoch_start``): target-train features from both mean nets (eval mode, so DSBN uses
its target branch), each L2-normalized, averaged and re-normalized → :func:`reidflow.cluster.pseudo_labels`
(sparse Jaccard + DBSCAN, outliers dropped) → the classifiers of all four nets get ``num_source +
C`` rows: source rows kept, cluster rows ← L2-normalized centroids → new optimizers (the optimizer is
reset) → ``ctx.refresh()``. The labels, the cluster count and the (adaptive) eps are in
``extra_state``, so a run resumed in the middle of an epoch continues exactly.

Batch (a dict): ``target_image`` (T images) and ``target_index`` (their rows in the target set, whose
pseudo labels the method holds); with ``use_source`` also ``source_image`` and ``source_pid`` (S
images, ids in ``[0, num_source_classes)``). The joint label of a target image is
``num_source_classes + cluster``. Every net sees ``[source | target]``; DSBN splits it at S. Each
net gets its own random augmentation of the batch (two views; net k and mean net k share view k).

Losses (weights from :class:`MMTConfig`, summed over both nets):
``ce`` label-smoothed CE on the joint labels; ``soft_ce`` each net's logits against the *other* mean
net's probabilities; ``triplet`` batch-hard softmax triplet on the joint labels; ``soft_triplet``
against the other mean net; ``moco`` target samples only, query = the net's BNNeck feature, key =
its own mean net's feature of the same view, negatives = that net's queue (then enqueued).

``mode: mmt+`` (defaults) vs ``mode: mmt`` (the original: target only, no DSBN, no MoCo, triplet 0.2 +
soft triplet 0.8, linear head). Fields set explicitly override the mode's defaults.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from reidflow.cluster import PseudoLabelConfig, cluster_centroids, clustering_metrics, pseudo_labels
from reidflow.config import StrictModel
from reidflow.errors import ConfigError, DataError
from reidflow.losses import (
    CrossEntropyLabelSmooth,
    MoCoQueue,
    moco_loss,
    soft_cross_entropy,
    soft_triplet_loss,
)
from reidflow.models.heads import build_classifier
from reidflow.models.norms import convert_to_dsbn, dsbn_route, has_dsbn
from reidflow.train import distributed as ddp
from reidflow.train.bn_refresh import recompute_target_bn
from reidflow.train.ema import make_mean_net, update_mean_net
from reidflow.train.engine import StepContext
from reidflow.train.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler

MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "mmt+": {
        "use_source": True,
        "dsbn": True,
        "triplet_weight": 0.0,
        "soft_triplet_weight": 0.0,
        "moco_weight": 0.1,
        "classifier": "arcface",
    },
    "mmt": {
        "use_source": False,
        "dsbn": False,
        "triplet_weight": 0.2,
        "soft_triplet_weight": 0.8,
        "moco_weight": 0.0,
        "classifier": "linear",
    },
}


class MMTConfig(StrictModel):
    """The method's knobs; ``mode`` fills every field of ``MODE_DEFAULTS`` that is not set explicitly."""

    mode: Literal["mmt+", "mmt"] = "mmt+"
    use_source: bool = True
    dsbn: bool = True
    ce_weight: float = Field(0.5, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    soft_ce_weight: float = Field(0.5, ge=0)
    triplet_weight: float = Field(0.0, ge=0)
    soft_triplet_weight: float = Field(0.0, ge=0)
    moco_weight: float = Field(0.1, ge=0)
    moco_queue_size: int = Field(12800, ge=1)
    moco_temperature: float = Field(0.07, gt=0)
    ema_max_alpha: float = Field(0.999, ge=0, lt=1)
    refresh_target_bn: bool = Field(
        True,
        description="recompute the mean nets' target BN statistics on the un-augmented target set before "
        "each clustering and before export (reidflow.train.bn_refresh); false: the reference's copied buffers",
    )
    classifier: Literal["linear", "arcface", "cosface"] = "arcface"
    classifier_scale: float | None = Field(None, gt=0)
    classifier_margin: float | None = Field(None, ge=0)
    cluster: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        mode = data.get("mode", "mmt+")
        if mode not in MODE_DEFAULTS:
            return data  # the Literal reports it
        return {**MODE_DEFAULTS[mode], **data}

    @model_validator(mode="after")
    def _check(self) -> MMTConfig:
        if self.dsbn and not self.use_source:
            raise ValueError("dsbn=true needs use_source=true (DSBN pairs a source and a target branch)")
        if self.classifier == "linear" and (self.classifier_scale or self.classifier_margin):
            raise ValueError("classifier 'linear' takes no classifier_scale/classifier_margin")
        return self


TargetImages = Callable[[], Iterable[Tensor]]


class MMTMethod:
    """See the module docstring. ``target_images()`` yields the target-train images (preprocessed,
    no augmentation) in a fixed order and fixed batches, ``num_target`` in all; ``on_labels`` is told
    every new labelling (the stage's pseudo-identity sampler), also when a run resumes."""

    def __init__(
        self,
        net1: nn.Module,
        net2: nn.Module,
        cfg: MMTConfig,
        optimizer: OptimizerConfig,
        train_transform: nn.Module,
        target_images: TargetImages,
        num_target: int,
        num_source_classes: int = 0,
        *,
        target_true_labels: np.ndarray | None = None,
        target_camids: np.ndarray | None = None,
        on_labels: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.cfg = cfg
        if cfg.cluster.camera_centering and (target_camids is None or len(target_camids) != num_target):
            raise DataError(
                "mmt: method.cluster.camera_centering needs the camera id of each of the "
                f"{num_target} target images"
            )
        dims = [int(getattr(n, "feature_dim", -1)) for n in (net1, net2)]
        if dims[0] < 1 or dims[0] != dims[1]:
            raise ConfigError(
                f"mmt: the two models must have the same feature size, got {dims[0]} and {dims[1]} "
                "(pretrain both with the same backbone/embedding)"
            )
        if cfg.use_source and num_source_classes < 1:
            raise ConfigError("mmt: use_source=true needs num_source_classes >= 1 (the source ids)")
        if not cfg.use_source:
            num_source_classes = 0
        for i, net in enumerate((net1, net2), start=1):
            rows = int(net.classifier.weight.shape[0])
            if rows < num_source_classes:
                raise ConfigError(
                    f"mmt: model {i}'s classifier has {rows} rows, fewer than the {num_source_classes} source ids"
                )
            if cfg.dsbn and not has_dsbn(net):
                convert_to_dsbn(net)
            if not cfg.dsbn and has_dsbn(net):
                raise ConfigError(f"mmt: model {i} has DSBN layers but dsbn=false")
        if num_target < 1:
            raise DataError("mmt: the target set is empty")
        if target_true_labels is not None and len(target_true_labels) != num_target:
            raise DataError(f"mmt: {len(target_true_labels)} target labels for {num_target} target images")
        self.nets = [net1, net2]
        self.means = [make_mean_net(net1), make_mean_net(net2)]
        self.feature_dim = dims[0]
        self.queues = (
            [MoCoQueue(cfg.moco_queue_size, dims[0]) for _ in range(2)] if cfg.moco_weight > 0 else []
        )
        self.optimizer_cfg = optimizer
        self.transform = train_transform
        self.target_images = target_images
        self.num_target = int(num_target)
        self.num_source = int(num_source_classes)
        self.true_labels = None if target_true_labels is None else np.asarray(target_true_labels)
        self.target_camids = None if target_camids is None else np.asarray(target_camids)
        self.on_labels = on_labels
        self.labels = np.full(self.num_target, -1, dtype=np.int64)
        self.num_clusters = 0
        self.eps: float | None = None
        self.cluster_history: list[dict[str, Any]] = []
        self._labels_device: Tensor | None = None
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: dict[str, Any] = {}
        self._ce: CrossEntropyLabelSmooth | None = None
        self._build_optimizers()

    # -- the Method protocol
    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {
            "net1": self.nets[0],
            "net2": self.nets[1],
            "mean1": self.means[0],
            "mean2": self.means[1],
        }
        mods.update({f"queue{i}": q for i, q in enumerate(self.queues, start=1)})
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def schedulers(self) -> dict[str, Any]:
        return dict(self._schedulers)

    def extra_state(self) -> dict[str, Any]:
        return {
            "labels": self.labels.copy(),
            "num_clusters": self.num_clusters,
            "eps": self.eps,
            "cluster_history": list(self.cluster_history),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        missing = {"labels", "num_clusters", "eps", "cluster_history"} - set(state)
        if missing:
            raise ConfigError(f"mmt: the checkpoint's extra state lacks {sorted(missing)}")
        labels = np.asarray(state["labels"], dtype=np.int64)
        if labels.shape != (self.num_target,):
            raise ConfigError(
                f"mmt: the checkpoint holds {labels.shape[0]} target labels, the target set has {self.num_target}"
            )
        self.labels, self.num_clusters = labels, int(state["num_clusters"])
        self.eps = None if state["eps"] is None else float(state["eps"])
        self.cluster_history = [dict(r) for r in state["cluster_history"]]
        if self.num_clusters > 0:  # shapes only: the checkpoint's weights are loaded next
            self._reset_classifiers(np.zeros((self.num_clusters, self.feature_dim), dtype=np.float32))
            self._build_optimizers()
        self._labels_device = None
        if self.on_labels is not None:
            self.on_labels(self.labels.copy())

    # -- re-clustering
    def on_epoch_start(self, epoch: int, ctx: StepContext) -> None:
        if self.cfg.refresh_target_bn:
            self.refresh_target_bn(ctx.device, ctx.autocast)
        features = self.target_features(ctx)
        result = pseudo_labels(features, self.cfg.cluster, eps=self.eps, camids=self.target_camids)
        if self.cfg.cluster.method == "dbscan" and self.cfg.cluster.adaptive_eps_rho and self.eps is None:
            self.eps = result.eps  # chosen once, at the first clustering
        self.labels, self.num_clusters = result.labels, result.num_clusters
        self._labels_device = None
        self._reset_classifiers(cluster_centroids(features, result.labels, result.num_clusters))
        self._build_optimizers()
        record: dict[str, Any] = {
            "epoch": epoch,
            "clusters": result.num_clusters,
            "outliers": result.num_outliers,
            "eps": result.eps,
        }
        if self.true_labels is not None:
            record.update(clustering_metrics(result.labels, self.true_labels))
        self.cluster_history.append(record)
        if self.on_labels is not None:
            self.on_labels(self.labels.copy())
        ctx.refresh()

    def refresh_target_bn(self, device: torch.device, autocast: Callable[[], Any] | None = None) -> None:
        """Both mean nets' target BN statistics, recomputed on the un-augmented target set
        (reidflow.train.bn_refresh); the nets' own statistics are copied in again at the next step."""
        for mean in self.means:
            recompute_target_bn(mean, self.target_images(), device, autocast)

    @torch.no_grad()
    def target_features(self, ctx: StepContext) -> np.ndarray:
        """Averaged, L2-normalized mean-net features of the target set (N×D, identical on every rank).

        Batch ``b`` is computed by rank ``b % world_size`` (batches as ``target_images()`` yields them,
        so the numbers do not depend on the number of processes) and gathered in batch order.
        """
        means = [ctx.unwrap("mean1"), ctx.unwrap("mean2")]
        modes = [m.training for m in means]
        for m in means:
            m.eval()
        mine: list[tuple[int, Tensor]] = []
        try:
            for b, images in enumerate(self.target_images()):
                if b % ctx.world_size != ctx.rank:
                    continue
                x = images.to(ctx.device)
                with ctx.autocast():
                    feats = [F.normalize(m(x).float(), dim=1) for m in means]
                mine.append((b, F.normalize(feats[0] + feats[1], dim=1).cpu()))
        finally:
            for m, was in zip(means, modes, strict=True):
                m.train(was)
        parts = sorted((p for rank_parts in ddp.gather_objects(mine) for p in rank_parts), key=lambda p: p[0])
        if not parts:
            raise DataError("mmt: target_images() yielded no batch")
        features = torch.cat([t for _, t in parts]).numpy()
        if features.shape[0] != self.num_target:
            raise DataError(
                f"mmt: target_images() yielded {features.shape[0]} images, expected {self.num_target}"
            )
        return features

    def _reset_classifiers(self, centroids: np.ndarray) -> None:
        """Every net's classifier: ``num_source`` rows kept, then one row per cluster (its centroid)."""
        cfg = self.cfg
        rows = self.num_source + centroids.shape[0]
        with torch.random.fork_rng(devices=[]):  # building draws random init; keep the training stream
            for net in [*self.nets, *self.means]:
                old = net.classifier.weight
                new = build_classifier(
                    cfg.classifier, self.feature_dim, rows, cfg.classifier_scale, cfg.classifier_margin
                )
                new.to(device=old.device, dtype=old.dtype)
                with torch.no_grad():
                    source_rows = old[: self.num_source]
                    if cfg.classifier != "linear":
                        # a cosine head reads only the direction; unit rows keep its gradients in
                        # scale (a linear pretrained head's rows are tiny: 1/|w| would blow them up)
                        source_rows = F.normalize(source_rows, dim=1)
                    new.weight[: self.num_source] = source_rows
                    new.weight[self.num_source :] = torch.from_numpy(centroids).to(old.device, old.dtype)
                new.weight.requires_grad_(old.requires_grad)
                net.classifier = new
                net.num_classes = rows
        self._ce = CrossEntropyLabelSmooth(rows, epsilon=cfg.label_smoothing)

    def _build_optimizers(self) -> None:
        self._optimizers = {
            f"net{i}": build_optimizer(net, self.optimizer_cfg) for i, net in enumerate(self.nets, start=1)
        }
        constant = SchedulerConfig(kind="constant")
        self._schedulers = {name: build_scheduler(opt, constant, 1) for name, opt in self._optimizers.items()}

    # -- one iteration
    def _joint_labels(self, batch: dict[str, Tensor], device: torch.device) -> Tensor:
        if self.num_clusters == 0:
            raise ConfigError("mmt: step() before the first clustering (on_epoch_start was not called)")
        if self._labels_device is None or self._labels_device.device != device:
            self._labels_device = torch.from_numpy(self.labels).to(device)
        target = self._labels_device[batch["target_index"].long()]
        if bool((target < 0).any()):
            bad = int(batch["target_index"][target < 0][0])
            raise DataError(
                f"mmt: target sample {bad} is an outlier of this epoch's clustering; sample clusters only"
            )
        target = target + self.num_source
        if not self.cfg.use_source:
            return target
        return torch.cat([batch["source_pid"].long(), target])

    def step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        cfg = self.cfg
        missing = [k for k in ("target_image", "target_index") if k not in batch]
        if cfg.use_source:
            missing += [k for k in ("source_image", "source_pid") if k not in batch]
        if missing:
            raise ConfigError(f"mmt: the batch lacks {missing}")
        labels = self._joint_labels(batch, ctx.device)
        images = batch["target_image"]
        n_source = 0
        if cfg.use_source:
            n_source = int(batch["source_image"].shape[0])
            images = torch.cat([batch["source_image"], images])
        self.transform.to(ctx.device)
        views = [self.transform(images), self.transform(images)]
        nets = [ctx.module("net1"), ctx.module("net2")]
        means = [ctx.unwrap("mean1"), ctx.unwrap("mean2")]
        outs, mean_outs = [], []
        for k in range(2):
            nets[k].train()
            means[k].train()
            with self._route(ctx.unwrap(f"net{k + 1}"), n_source), ctx.autocast():
                outs.append(nets[k](views[k], labels))
            with torch.no_grad(), self._route(means[k], n_source), ctx.autocast():
                mean_outs.append(means[k](views[k]))
        terms = self._losses(outs, mean_outs, labels, n_source)
        ctx.backward_and_step(terms, ("net1", "net2"))
        for k in range(2):
            update_mean_net(means[k], ctx.unwrap(f"net{k + 1}"), ctx.iteration, cfg.ema_max_alpha)
        for k, queue in enumerate(self.queues):
            queue.enqueue(mean_outs[k]["bn_features"][n_source:].float())
        metrics: dict[str, Tensor | float] = {k: v.detach() for k, v in terms.items()}
        for k in range(2):
            metrics[f"acc{k + 1}"] = (outs[k]["logits"].detach().argmax(1) == labels).float().mean()
        metrics.update(self._cluster_metrics())
        return metrics

    def _route(self, net: nn.Module, n_source: int) -> contextlib.AbstractContextManager[Any]:
        if not self.cfg.dsbn:
            return contextlib.nullcontext()
        return dsbn_route(net, "split", split_at=n_source)

    def _losses(
        self, outs: list[dict[str, Any]], mean_outs: list[dict[str, Any]], labels: Tensor, n_source: int
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        assert self._ce is not None
        terms: dict[str, Tensor] = {}
        other = [1, 0]
        if cfg.ce_weight > 0:
            terms["ce"] = cfg.ce_weight * sum(self._ce(o["logits"].float(), labels) for o in outs)
        if cfg.soft_ce_weight > 0:
            terms["soft_ce"] = cfg.soft_ce_weight * sum(
                soft_cross_entropy(outs[k]["logits"], mean_outs[other[k]]["logits"]) for k in range(2)
            )
        if cfg.triplet_weight > 0:
            terms["triplet"] = cfg.triplet_weight * sum(
                soft_triplet_loss(o["features"], labels) for o in outs
            )
        if cfg.soft_triplet_weight > 0:
            terms["soft_triplet"] = cfg.soft_triplet_weight * sum(
                soft_triplet_loss(outs[k]["features"], labels, mean_outs[other[k]]["features"])
                for k in range(2)
            )
        if cfg.moco_weight > 0:
            terms["moco"] = cfg.moco_weight * sum(
                moco_loss(
                    outs[k]["bn_features"][n_source:],
                    mean_outs[k]["bn_features"][n_source:],
                    self.queues[k].negatives(),
                    cfg.moco_temperature,
                )
                for k in range(2)
            )
        if not terms:
            raise ConfigError("mmt: every loss weight is 0; nothing to train")
        return terms  # type: ignore[return-value]

    def _cluster_metrics(self) -> dict[str, float]:
        if not self.cluster_history:
            return {}
        last = self.cluster_history[-1]
        keys = ("clusters", "outliers", "purity", "nmi", "ari")
        return {f"cluster/{k}": float(last[k]) for k in keys if k in last}
