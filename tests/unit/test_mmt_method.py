"""MMT / MMT+ pieces and the method on the real engine: EMA mean nets, the MoCo queue, soft CE / soft
triplet, mode presets, re-clustering (classifier rows ← centroids, optimizer reset) and exact resume
across a re-clustering; tiny nets and random tensors from tests/integration/mmt_ddp_worker.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from reidflow.cluster import cluster_centroids
from reidflow.errors import ConfigError, DataError
from reidflow.losses import MoCoQueue, moco_loss, soft_cross_entropy, soft_triplet_loss
from reidflow.models.norms import DomainSpecificBatchNorm, has_dsbn
from reidflow.train.ema import ema_alpha, make_mean_net, update_mean_net
from reidflow.train.engine import Engine, EngineConfig
from reidflow.train.mmt import MMTConfig, MMTMethod
from tests.integration.mmt_ddp_worker import (
    NUM_SOURCE_IDS,
    OPTIMIZER,
    PairDataset,
    PairSampler,
    build_method,
    tiny_cluster_config,
    tiny_images,
    tiny_net,
)

torch.set_num_threads(1)

# ------------------------------------------------------------------------------------------------
# EMA


def test_ema_alpha_warms_up_then_caps() -> None:
    assert [ema_alpha(t) for t in range(4)] == [0.0, 0.5, pytest.approx(2 / 3), 0.75]
    assert ema_alpha(10**6) == 0.999
    assert ema_alpha(3, max_alpha=0.6) == 0.6
    with pytest.raises(ConfigError, match="step must be >= 0"):
        ema_alpha(-1)


def test_mean_net_averages_parameters_and_copies_buffers() -> None:
    net = tiny_net(0)
    mean = make_mean_net(net)
    assert not any(p.requires_grad for p in mean.parameters())
    before = {k: v.clone() for k, v in mean.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net.backbone.bn1.running_mean.fill_(3.0)
        net.backbone.bn1.num_batches_tracked.fill_(9)
    alpha = update_mean_net(mean, net, step=3)
    assert alpha == 0.75
    for name, p in net.named_parameters():
        expected = 0.75 * before[name] + 0.25 * p.detach()
        assert torch.allclose(dict(mean.named_parameters())[name], expected), name
    assert torch.equal(mean.backbone.bn1.running_mean, torch.full((8,), 3.0))  # copied, not averaged
    assert int(mean.backbone.bn1.num_batches_tracked) == 9
    update_mean_net(mean, net, step=0)  # α = 0: the mean net becomes the net
    for name, p in net.named_parameters():
        assert torch.equal(dict(mean.named_parameters())[name], p.detach())


# ------------------------------------------------------------------------------------------------
# MoCo


def test_moco_queue_wraps_around_and_round_trips() -> None:
    queue = MoCoQueue(size=5, dim=2)
    assert queue.negatives().shape == (0, 2)
    keys = F.normalize(torch.arange(1, 15, dtype=torch.float32).view(7, 2), dim=1)
    queue.enqueue(keys[:3])
    assert int(queue.ptr) == 3 and int(queue.filled) == 3
    assert torch.allclose(queue.negatives(), keys[:3])
    queue.enqueue(keys[3:7])  # 4 more: wraps, overwriting the two oldest
    assert int(queue.ptr) == 2 and int(queue.filled) == 5
    assert torch.allclose(queue.keys, torch.stack([keys[5], keys[6], keys[2], keys[3], keys[4]]))
    queue.enqueue(torch.cat([keys, keys])[:12])  # more than the queue: only the newest 5 survive
    assert int(queue.filled) == 5 and int(queue.ptr) == (2 + 5) % 5
    newest = F.normalize(torch.cat([keys, keys])[7:12], dim=1)
    assert torch.allclose(queue.keys[torch.tensor([2, 3, 4, 0, 1])], newest)  # oldest first from ptr
    restored = MoCoQueue(5, 2)
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.keys, queue.keys) and int(restored.ptr) == int(queue.ptr)
    with pytest.raises(ConfigError, match="expected N×2 keys"):
        queue.enqueue(torch.zeros(3, 4))


def test_moco_loss_is_infonce() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, n = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g)
    qn, kn, nn_ = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(n, dim=1)
    expected = 0.0
    for i in range(4):
        pos = math.exp(float(qn[i] @ kn[i]) / 0.1)
        neg = sum(math.exp(float(qn[i] @ nn_[j]) / 0.1) for j in range(6))
        expected -= math.log(pos / (pos + neg)) / 4
    assert float(moco_loss(q, k, nn_, 0.1)) == pytest.approx(expected, rel=1e-5)
    assert float(moco_loss(q, k, torch.zeros(0, 3), 0.1)) == pytest.approx(0.0, abs=1e-7)  # empty queue


# ------------------------------------------------------------------------------------------------
# soft losses


def test_soft_cross_entropy() -> None:
    logits, target = torch.randn(5, 4), torch.randn(5, 4)
    expected = -(F.softmax(target, 1) * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(soft_cross_entropy(logits, target), expected)
    # against itself it is the entropy, and its gradient at the target is zero
    x = target.clone().requires_grad_(True)
    soft_cross_entropy(x, target).backward()
    assert x.grad.abs().max() < 1e-6


def test_soft_triplet_hard_and_soft_forms() -> None:
    from reidflow.losses import euclidean_dist

    g = torch.Generator().manual_seed(1)
    feats, ref = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    f, r = F.normalize(feats, dim=1), F.normalize(ref, dim=1)
    d, dr = euclidean_dist(f, f), euclidean_dist(r, r)
    hard, soft = [], []
    for i in range(6):
        same = [j for j in range(6) if labels[j] == labels[i]]
        other = [j for j in range(6) if labels[j] != labels[i]]
        p = max(same, key=lambda j: float(d[i, j]))  # mined on the net's own distances
        n = min(other, key=lambda j: float(d[i, j]))
        log_p = F.log_softmax(torch.stack([d[i, p], d[i, n]]), 0)
        hard.append(-log_p[1])
        soft.append(-(F.softmax(torch.stack([dr[i, p], dr[i, n]]), 0) * log_p).sum())
    assert float(soft_triplet_loss(feats, labels)) == pytest.approx(float(torch.stack(hard).mean()), rel=1e-5)
    assert float(soft_triplet_loss(feats, labels, ref)) == pytest.approx(
        float(torch.stack(soft).mean()), rel=1e-5
    )
    x = feats.clone().requires_grad_(True)
    soft_triplet_loss(x, labels, ref).backward()
    assert x.grad.abs().sum() > 0
    single = feats.clone().requires_grad_(True)  # one label (a one-cluster epoch): no triplet, no error
    loss = soft_triplet_loss(single, torch.zeros(6, dtype=torch.long), ref)
    loss.backward()
    assert float(loss) == 0.0 and float(single.grad.abs().sum()) == 0.0


# ------------------------------------------------------------------------------------------------
# config and construction


def test_mode_presets_and_overrides() -> None:
    plus = MMTConfig()
    assert (plus.use_source, plus.dsbn, plus.moco_weight, plus.soft_triplet_weight, plus.classifier) == (
        True,
        True,
        0.1,
        0.0,
        "arcface",
    )
    original = MMTConfig(mode="mmt")
    assert (original.use_source, original.dsbn, original.moco_weight) == (False, False, 0.0)
    assert (original.triplet_weight, original.soft_triplet_weight, original.classifier) == (
        0.2,
        0.8,
        "linear",
    )
    assert MMTConfig(mode="mmt", moco_weight=0.3).moco_weight == 0.3  # explicit values win
    with pytest.raises(ValueError, match="dsbn=true needs use_source=true"):
        MMTConfig(use_source=False)


def test_two_models_with_different_feature_sizes_are_refused() -> None:
    from reidflow.models.reid_model import ReIDModel
    from tests.integration.mmt_ddp_worker import TinyBackbone

    wide = ReIDModel(TinyBackbone(), pool="avg", num_classes=NUM_SOURCE_IDS, embedding_dim=5)
    with pytest.raises(ConfigError, match="same feature size, got 8 and 5"):
        MMTMethod(tiny_net(1), wide, MMTConfig(), OPTIMIZER, nn.Identity(), list, 4, NUM_SOURCE_IDS)


def test_construction_pairs_the_bns_and_builds_four_nets() -> None:
    images = tiny_images()
    method = build_method(images, PairSampler(images["source_pid"], len(images["target"])))
    mods = method.modules()
    assert sorted(mods) == ["mean1", "mean2", "net1", "net2", "queue1", "queue2"]
    assert all(has_dsbn(mods[n]) for n in ("net1", "net2", "mean1", "mean2"))
    assert isinstance(mods["net1"].neck, DomainSpecificBatchNorm)
    assert sorted(method.optimizers()) == ["net1", "net2"]


# ------------------------------------------------------------------------------------------------
# re-clustering and the engine


def fit(tmp_path: Path, epochs: int, max_iters: int | None = None, resume: bool = False, **cfg: Any):
    images = tiny_images()
    sampler = PairSampler(images["source_pid"], len(images["target"]), seed=3)
    config = MMTConfig(moco_queue_size=6, cluster=tiny_cluster_config(), **cfg)
    method = build_method(images, sampler, config, transform=RandomFlipNoise())
    loader = DataLoader(PairDataset(images), batch_sampler=sampler)
    engine_cfg = EngineConfig(epochs=epochs, max_iters=max_iters, device="cpu", checkpoint_every=1, seed=4)
    result = Engine(method, loader, engine_cfg, tmp_path, default_hooks=False).fit(resume=resume)
    return method, result, sampler


class RandomFlipNoise(nn.Module):
    """A random augmentation drawn from torch's global RNG (so resume must restore it exactly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(x.shape[0], 1, 1, 1) < 0.5
        return torch.where(flip, x.flip(-1), x) + 0.05 * torch.randn_like(x)


def test_reclustering_sets_classifier_rows_and_resets_the_optimizer(tmp_path: Path) -> None:
    method, result, sampler = fit(tmp_path, epochs=2)
    history = method.cluster_history
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[0]["clusters"] == 6 and history[0]["purity"] == 1.0  # tiny target: 6 clean ids
    assert np.array_equal(sampler.labels, method.labels)  # the sampler was told
    assert result.history[-1]["cluster/clusters"] == 6.0
    for key in ("ce", "soft_ce", "moco", "acc1", "acc2"):
        assert all(np.isfinite(r[key]) for r in result.history), key
    rows = NUM_SOURCE_IDS + method.num_clusters
    for name in ("net1", "net2", "mean1", "mean2"):
        assert method.modules()[name].classifier.weight.shape == (rows, 8)
    # right after a re-clustering the cluster rows are the normalized centroids, for all four nets
    images = tiny_images()
    ctx = Engine(
        method,
        DataLoader(PairDataset(images), batch_sampler=sampler),
        EngineConfig(max_iters=1, device="cpu"),
    )
    ctx.bind()
    old_opt = method.optimizers()["net1"]
    method.on_epoch_start(2, ctx.ctx)
    features = method.target_features(ctx.ctx)
    cents = torch.from_numpy(cluster_centroids(features, method.labels, method.num_clusters))
    for name in ("net1", "mean2"):
        assert torch.allclose(method.modules()[name].classifier.weight[NUM_SOURCE_IDS:], cents, atol=1e-6)
    new_opt = method.optimizers()["net1"]
    assert new_opt is not old_opt and not new_opt.state  # the optimizer is reset
    assert ctx.optimizers["net1"] is new_opt  # and the engine re-bound


def test_resume_is_exact_across_a_reclustering(tmp_path: Path) -> None:
    straight, straight_result, _ = fit(tmp_path / "straight", epochs=3)
    fit(tmp_path / "cut", epochs=3, max_iters=3)  # stops in the middle of epoch 1 (2 iters per epoch)
    resumed, resumed_result, _ = fit(tmp_path / "cut", epochs=3, resume=True)
    assert resumed_result.start_iteration == 3
    assert [r["epoch"] for r in resumed.cluster_history] == [0, 1, 2]  # epoch 2 re-clustered after resume
    assert resumed.cluster_history == straight.cluster_history
    assert np.array_equal(resumed.labels, straight.labels)
    for name, module in straight.modules().items():
        other = resumed.modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(other[key], value), f"{name}.{key}"
    resumed_steps = [r for r in resumed_result.history if r["iteration"] > 3]
    straight_steps = [r for r in straight_result.history if r["iteration"] > 3]
    assert len(straight_steps) == 3
    for key in ("ce", "soft_ce", "moco", "cluster/clusters"):
        assert [r[key] for r in resumed_steps] == [r[key] for r in straight_steps], key


def test_original_mmt_mode_trains_target_only(tmp_path: Path) -> None:
    method, result, _ = fit(tmp_path, epochs=1, mode="mmt")
    assert not has_dsbn(method.nets[0]) and method.queues == []
    assert method.num_source == 0
    assert method.nets[0].classifier.weight.shape[0] == method.num_clusters
    assert {"ce", "soft_ce", "triplet", "soft_triplet"} <= set(result.history[-1])
    assert "moco" not in result.history[-1]


def test_an_outlier_in_the_batch_is_a_clear_error() -> None:
    images = tiny_images()
    method = build_method(images, PairSampler(images["source_pid"], len(images["target"])))
    method.labels[:] = 0
    method.labels[5] = -1
    method.num_clusters = 1
    with pytest.raises(DataError, match="target sample 5 is an outlier"):
        method._joint_labels(
            {"target_index": torch.tensor([1, 5]), "source_pid": torch.tensor([0, 1])}, torch.device("cpu")
        )
