"""Wall time of one MetaBIN training iteration vs one plain BN iteration, same backbone, same batch.

- baseline: one :class:`PretrainMethod` step on a ``norm: bn`` model (forward, CE + batch-hard
  triplet, backward, SGD step).
- metabin_first_order (the headline): one :class:`MetaBINMethod` step on a ``norm: metabin`` model:
  base step on θ, then the first-order meta step on ρ (meta-train forward + inner gradient,
  virtual gates, meta-test forward through ``functional_call``, backward, SGD on ρ).
- metabin_second_order: the same with ``second_order=True`` (reported, not the headline).

Each method runs through its real ``step()`` with the StepContext of a bound :class:`Engine` (CPU,
no AMP); the engine's per-iteration scheduler step is included, its logging/metric reduction is not.
Optimizers as the MetaBIN stage builds them (docs/methods/metabin.md): θ SGD lr 0.01, m 0.9, wd 5e-4, bias lr
×2; ρ plain SGD lr 0.1; β from :class:`CyclicInnerLR`. Data: fixed-seed noise images, base batch
P×K = 16×4, meta batch 3 domains × 4 ids × 4 images; no augmentation (identity transform), so only
the training step is timed.

Protocol: 2 warm-up iterations each, then N timed iterations (default 10, ``--quick`` 3),
interleaved baseline / first order / second order so machine noise hits all alike; the median of
the per-iteration wall times is reported. Timing is plain ``perf_counter`` (no tracemalloc: it taxes
Python allocations and the meta step is the more Python-heavy one).

Target: ``ratio = metabin_first_order / baseline <= 2.5``. The script reports ``meets_target`` and
always exits 0: a benchmark reports, it does not gate.

    python bench/bench_metabin.py [--quick] [--iters N] [--threads T] [--backbone NAME]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from reidflow.models.reid_model import build_reid_model
from reidflow.train.engine import Engine, EngineConfig, StepContext
from reidflow.train.metabin import CyclicInnerLR, MetaBINMethod, MetaStepConfig, build_metabin_optimizers
from reidflow.train.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler
from reidflow.train.pretrain import LossConfig, PretrainMethod
from reidflow.train.runtime import move_to_device

TARGET_RATIO = 2.5
WARMUP_ITERS = 2
P, K = 16, 4  # base batch: P identities × K images
META_DOMAINS, META_IDS, META_IMAGES = 3, 4, 4  # meta batch: per domain, ids × images
THETA_OPTIMIZER = OptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, bias_lr_factor=2.0)
RHO_LR = 0.1


class NoiseImages(Dataset):
    """``P × K`` fixed-seed noise images; identity ``i // K``."""

    def __init__(self, height: int, width: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(P * K, 3, height, width, generator=g)
        self.pids = torch.arange(P).repeat_interleave(K)

    def __len__(self) -> int:
        return P * K

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "pid": self.pids[i]}


class OneBatchSampler:
    """Every epoch is the single P×K batch ``[0, P·K)`` (the engine's sampler protocol)."""

    def set_epoch(self, epoch: int) -> None:
        pass

    def skip(self, num_batches: int) -> None:
        pass

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[list[int]]:
        yield list(range(P * K))


def meta_batch(height: int, width: int, seed: int = 1) -> dict[str, Tensor]:
    """Domain-balanced: ``META_DOMAINS`` × ``META_IDS`` ids × ``META_IMAGES`` images, ids distinct per domain."""
    g = torch.Generator().manual_seed(seed)
    n = META_DOMAINS * META_IDS * META_IMAGES
    return {
        "image": torch.randn(n, 3, height, width, generator=g),
        "pid": torch.arange(META_DOMAINS * META_IDS).repeat_interleave(META_IMAGES),
        "domain": torch.arange(META_DOMAINS).repeat_interleave(META_IDS * META_IMAGES),
    }


def bound_context(method: Any, loader: DataLoader) -> StepContext:
    """The real engine's StepContext for ``method`` (modules on CPU, optimizers bound, no AMP)."""
    engine = Engine(method, loader, EngineConfig(max_iters=1, device="cpu"), default_hooks=False)
    engine.bind()
    return engine.ctx


def constant_schedule(optimizer: torch.optim.Optimizer) -> Any:
    return build_scheduler(optimizer, SchedulerConfig(kind="constant"), iters_per_epoch=1)


def build_model(backbone: str, norm: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_reid_model({"backbone": backbone, "norm": norm, "num_classes": P}).train()


def baseline_method(backbone: str) -> PretrainMethod:
    model = build_model(backbone, "bn", seed=0)
    optimizer = build_optimizer(model, THETA_OPTIMIZER)
    return PretrainMethod(model, optimizer, constant_schedule(optimizer), LossConfig(), P, nn.Identity())


def metabin_method(backbone: str, meta: dict[str, Tensor], second_order: bool) -> MetaBINMethod:
    model = build_model(backbone, "metabin", seed=0)
    theta_opt, rho_opt = build_metabin_optimizers(model, THETA_OPTIMIZER, rho_lr=RHO_LR)
    return MetaBINMethod(
        model,
        theta_opt,
        rho_opt,
        constant_schedule(theta_opt),
        constant_schedule(rho_opt),
        LossConfig(),
        P,
        nn.Identity(),
        lambda t: meta,
        CyclicInnerLR(RHO_LR, low=1e-3, high=1e-1, period_iters=100),
        MetaStepConfig(second_order=second_order),
    )


def iteration_runner(method: Any, loader: DataLoader) -> Callable[[], float]:
    """A callable running the next iteration (step + scheduler steps) and returning its wall seconds."""
    ctx = bound_context(method, loader)
    batch = move_to_device(next(iter(loader)), ctx.device)
    schedulers = list(method.schedulers().values())

    def run() -> float:
        start = time.perf_counter()
        method.step(batch, ctx)
        for scheduler in schedulers:
            scheduler.step()
        seconds = time.perf_counter() - start
        ctx.iteration += 1
        return seconds

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64x32 input and 3 timed iterations")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 10, --quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--backbone", default="osnet_x0_25")
    args = parser.parse_args()
    if args.iters is not None and args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    height, width = (64, 32) if args.quick else (128, 64)
    iters = args.iters or (3 if args.quick else 10)

    loader = DataLoader(NoiseImages(height, width), batch_sampler=OneBatchSampler())
    meta = meta_batch(height, width)
    runners = {
        "baseline": iteration_runner(baseline_method(args.backbone), loader),
        "metabin_first_order": iteration_runner(metabin_method(args.backbone, meta, False), loader),
        "metabin_second_order": iteration_runner(metabin_method(args.backbone, meta, True), loader),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(WARMUP_ITERS + iters):
        for name, run in runners.items():  # interleaved: A B C A B C ...
            seconds = run()
            if i >= WARMUP_ITERS:
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["metabin_first_order"] / median["baseline"]
    report = {
        "benchmark": "metabin_iteration",
        "backbone": args.backbone,
        "input_size": [height, width],
        "batch": {
            "p": P,
            "k": K,
            "meta_domains": META_DOMAINS,
            "meta_ids_per_domain": META_IDS,
            "meta_images_per_id": META_IMAGES,
            "meta_train_domains": MetaStepConfig().n_mtrain,
        },
        "threads": torch.get_num_threads(),
        "warmup_iters": WARMUP_ITERS,
        "timed_iters": iters,
        "baseline_seconds": round(median["baseline"], 4),
        "metabin_first_order_seconds": round(median["metabin_first_order"], 4),
        "metabin_second_order_seconds": round(median["metabin_second_order"], 4),
        "ratio": round(ratio, 3),
        "ratio_second_order": round(median["metabin_second_order"] / median["baseline"], 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
