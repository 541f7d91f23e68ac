"""A tiny MMT+ run (two tiny BN nets, DSBN, MoCo, re-clustering each epoch) on random tensors.

Run by test_mmt_ddp.py as one plain process or under torchrun (2 gloo ranks, each taking half of
every global batch: its slice of the source half and of the target half); the unit tests import
the tiny world from here. Writes ``result.json`` (history, cluster history, final labels) and the
weights of every module (rank 0).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from reidflow.cluster import PseudoLabelConfig
from reidflow.models.reid_model import ReIDModel
from reidflow.train.distributed import distributed_session
from reidflow.train.engine import Engine, EngineConfig
from reidflow.train.mmt import MMTConfig, MMTMethod
from reidflow.train.optim import OptimizerConfig

NUM_SOURCE_IDS, SOURCE_PER_ID = 4, 4
NUM_TARGET_IDS, TARGET_PER_ID = 6, 4
P, K = 2, 2  # global batch: P×K source + P×K target
ITERS_PER_EPOCH = 2
# SGD, not MMT+'s Adam: Adam turns float noise in (near-)zero gradients into full-size steps of
# either sign, which would hide what the 1-vs-2-process comparison checks
OPTIMIZER = OptimizerConfig(name="sgd", lr=0.002, momentum=0.9, weight_decay=5e-4)


class TinyBackbone(nn.Module):
    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def tiny_net(seed: int) -> ReIDModel:
    torch.manual_seed(seed)
    return ReIDModel(TinyBackbone(), pool="avg", num_classes=NUM_SOURCE_IDS, classifier="linear")


def tiny_images() -> dict[str, Tensor]:
    """Source and target images: one random pattern per identity plus a little noise; the target is
    shifted and scaled (another domain)."""
    g = torch.Generator().manual_seed(11)
    src_pat = torch.randn(NUM_SOURCE_IDS, 3, 8, 8, generator=g)
    tgt_pat = torch.randn(NUM_TARGET_IDS, 3, 8, 8, generator=g)
    src_pid = torch.arange(NUM_SOURCE_IDS).repeat_interleave(SOURCE_PER_ID)
    tgt_pid = torch.arange(NUM_TARGET_IDS).repeat_interleave(TARGET_PER_ID)
    source = src_pat[src_pid] + 0.2 * torch.randn(len(src_pid), 3, 8, 8, generator=g)
    target = 1.5 * tgt_pat[tgt_pid] + 0.5 + 0.2 * torch.randn(len(tgt_pid), 3, 8, 8, generator=g)
    return {"source": source, "source_pid": src_pid, "target": target, "target_pid": tgt_pid}


class PairDataset(Dataset):
    """Item ``s * num_target + t``: source image ``s`` with target image ``t``."""

    def __init__(self, images: dict[str, Tensor]) -> None:
        self.images = images
        self.num_target = len(images["target"])

    def __len__(self) -> int:
        return len(self.images["source"]) * self.num_target

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, t = divmod(int(i), self.num_target)
        return {
            "source_image": self.images["source"][s],
            "source_pid": self.images["source_pid"][s],
            "target_image": self.images["target"][t],
            "target_index": torch.tensor(t),
        }


class PairSampler:
    """P source ids × K images paired with P pseudo ids × K images, from (seed, epoch, labels);
    rank r takes the r-th slice of every global batch; resumable (``skip``)."""

    def __init__(
        self, source_pid: Tensor, num_target: int, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.source_pid = source_pid.numpy()
        self.num_target = num_target
        self.seed, self.rank, self.world = seed, rank, world
        self.labels = np.full(num_target, -1)
        self.epoch, self._skip = 0, 0

    def set_labels(self, labels: np.ndarray) -> None:
        self.labels = labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, num_batches: int) -> None:
        self._skip = num_batches

    def __len__(self) -> int:
        return ITERS_PER_EPOCH

    def _global_batch(self, rng: np.random.Generator) -> list[int]:
        clusters = np.unique(self.labels[self.labels >= 0])
        src_ids = rng.choice(NUM_SOURCE_IDS, P, replace=False)
        tgt_ids = rng.choice(clusters, P, replace=len(clusters) < P)
        sources = [int(s) for i in src_ids for s in rng.choice(np.flatnonzero(self.source_pid == i), K)]
        targets = [int(t) for c in tgt_ids for t in rng.choice(np.flatnonzero(self.labels == c), K)]
        return [s * self.num_target + t for s, t in zip(sources, targets, strict=True)]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        batches = [self._global_batch(rng) for _ in range(len(self))]
        start, self._skip = self._skip, 0
        share = P * K // self.world
        for batch in batches[start:]:
            yield batch[self.rank * share : (self.rank + 1) * share]


def tiny_cluster_config() -> PseudoLabelConfig:
    return PseudoLabelConfig(k1=4, k2=2, eps=0.6, min_samples=2)


# A linear head here, not MMT+'s ArcFace (s = 64): on a net this tiny, the sharp s = 64 softmax
# amplifies float rounding (1e-7) to 1e-3 within a few steps, in one process as in two.
def build_method(
    images: dict[str, Tensor],
    sampler: PairSampler,
    cfg: MMTConfig | None = None,
    transform: nn.Module | None = None,
) -> MMTMethod:
    cfg = cfg or MMTConfig(moco_queue_size=6, classifier="linear", cluster=tiny_cluster_config())
    target = images["target"]
    return MMTMethod(
        tiny_net(1),
        tiny_net(2),
        cfg,
        OPTIMIZER,
        transform or nn.Identity(),
        lambda: [target[i : i + 5] for i in range(0, len(target), 5)],
        len(target),
        NUM_SOURCE_IDS,
        target_true_labels=images["target_pid"].numpy(),
        on_labels=sampler.set_labels,
    )


def run(out: Path, ckpt: Path, epochs: int, max_iters: int | None, resume: bool) -> None:
    torch.set_num_threads(1)
    with distributed_session() as info:
        images = tiny_images()
        sampler = PairSampler(images["source_pid"], len(images["target"]), 3, info.rank, info.world_size)
        method = build_method(images, sampler)
        loader = DataLoader(PairDataset(images), batch_sampler=sampler)
        cfg = EngineConfig(epochs=epochs, max_iters=max_iters, device="cpu", checkpoint_every=1, seed=4)
        result = Engine(method, loader, cfg, ckpt, default_hooks=False).fit(resume=resume)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            tensors = {
                f"{name}.{key}": value.detach().clone().contiguous()
                for name, module in method.modules().items()
                for key, value in module.state_dict().items()
            }
            save_file(tensors, out / "weights.safetensors")
            report = {
                "world_size": info.world_size,
                "start": result.start_iteration,
                "final": result.final_iteration,
                "history": result.history,
                "cluster_history": method.cluster_history,
                "labels": method.labels.tolist(),
            }
            (out / "result.json").write_text(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-iters", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    run(args.out, args.ckpt, args.epochs, args.max_iters, args.resume)


if __name__ == "__main__":
    main()
