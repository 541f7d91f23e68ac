"""Training run used by test_ddp.py, launched by torchrun (2 gloo ranks) or as one plain process.

The model is BN-free on purpose: under DDP each rank would normalise its half of the batch with
its own BatchNorm statistics, so the forward pass itself would differ from a single process that
sees the whole batch (SyncBatchNorm fixes that, but PyTorch only runs it on CUDA). Without BN and
with a per-rank loss that is a mean over equally sized halves, DDP's gradient averaging gives
exactly the full-batch gradient, so the weights must agree up to float summation order.
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
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reidflow.train.distributed import distributed_session
from reidflow.train.engine import Engine, EngineConfig, StepContext, seed_everything
from reidflow.train.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler

GLOBAL_BATCH = 16


class SplitBatchSampler:
    """Same global batches as one process would draw; rank r takes the r-th slice of each."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, num_batches: int) -> None:
        self._skip = num_batches

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        start, self._skip = self._skip, 0
        share = self.batch_size // self.world_size
        for b in range(start, len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield batch[self.rank * share : (self.rank + 1) * share].tolist()


class MLPClassifier:
    def __init__(self, iters_per_epoch: int) -> None:
        self.mlp = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        self.opt = build_optimizer(
            self.mlp, OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, bias_lr_factor=2.0)
        )
        self.sched = build_scheduler(self.opt, SchedulerConfig(warmup=1, milestones=[2]), iters_per_epoch)
        self.wrapper_type = ""

    def modules(self) -> dict[str, nn.Module]:
        return {"mlp": self.mlp}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"sgd": self.opt}

    def schedulers(self) -> dict[str, Any]:
        return {"sgd": self.sched}

    def step(self, batch: list[torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        x, y = batch
        model = ctx.module("mlp")
        self.wrapper_type = type(model).__name__
        loss = nn.functional.cross_entropy(model(x), y)
        ctx.backward_and_step(loss, "sgd")
        return {"loss": loss, "rank": float(ctx.rank)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--max-iters", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with distributed_session() as info:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 10, generator=g)
        y = (x[:, :3].argmax(1) + (x[:, 3] > 1).long()) % 3
        sampler = SplitBatchSampler(len(y), GLOBAL_BATCH, seed=1, rank=info.rank, world_size=info.world_size)
        loader = DataLoader(TensorDataset(x, y), batch_sampler=sampler)
        seed_everything(0)
        method = MLPClassifier(len(sampler))
        cfg = EngineConfig(
            epochs=3, max_iters=args.max_iters, device="cpu", checkpoint_every=4, seed=0, log_every=1000
        )
        result = Engine(method, loader, cfg, args.ckpt, default_hooks=False).fit(resume=args.resume)
        if info.is_main:
            args.out.mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.contiguous() for k, v in method.mlp.state_dict().items()},
                args.out / "weights.safetensors",
            )
            (args.out / "result.json").write_text(
                json.dumps(
                    {
                        "world_size": info.world_size,
                        "wrapper": method.wrapper_type,
                        "start": result.start_iteration,
                        "final": result.final_iteration,
                        "samples": result.samples,
                        "history": result.history,
                    }
                )
            )


if __name__ == "__main__":
    main()
