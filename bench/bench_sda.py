"""Wall time of one SDA iteration through the engine vs a bare-torch loop doing the same forward/backward,
and translate throughput vs bare generator inference.

- bare (the baseline): a plain loop over the same networks (two ResNet generators, two PatchGANs,
  two frozen osnet encoders), the same batch: G forward x6, LSGAN + cycle + identity L1, the
  relation soft triplet written inline (cdist, masked argmax/argmin, two-way softmax CE),
  backward into the generators, Adam; then the discriminators on pooled fakes, backward, Adam.
- engine (the headline): :class:`SDAMethod` ``step()`` with the StepContext of a bound
  :class:`Engine` (CPU, no AMP): the same work plus the engine's guards (finite-loss checks,
  gradient norms) and the per-iteration scheduler steps; its logging/metric reduction is not timed.
- bare_cyclegan (context): the bare loop without encoders or relation loss. ``relation_share`` is the
  part of the bare SDA iteration the relation term (two encoder forwards, the backward through the
  target encoder) costs; ``ratio_vs_bare_cyclegan`` is engine SDA over bare CycleGAN.

Both sides get already-normalized noise images (no augmentation), so only the training step is timed.
Protocol: 2 warm-up iterations each, then N timed iterations (default 10, ``--quick`` 3), interleaved
so machine noise hits all alike; the median per-iteration wall time is reported.

Translate: ``sda translate``'s per-dataset path (decode, generator, JPEG encode, shard writer with
index and card) on a synthetic shard dataset, against the generator alone on the same images
already decoded and normalized (images/s each).

Target: ``ratio = engine / bare <= 1.15``. The script reports ``meets_target`` and always exits 0.

    python bench/bench_sda.py [--quick] [--iters N] [--threads T]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from reidflow.data.sample import Sample
from reidflow.data.shards import write_shards
from reidflow.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig
from reidflow.losses import ImagePool
from reidflow.models.reid_model import build_reid_model
from reidflow.models.sda import DiscriminatorConfig, GeneratorConfig, build_discriminator, build_generator
from reidflow.stages.sda import TranslateConfig, translate_dataset
from reidflow.train.engine import Engine, EngineConfig
from reidflow.train.optim import OptimizerConfig, build_optimizer
from reidflow.train.runtime import move_to_device
from reidflow.train.sda import EncoderInput, GanScheduleConfig, SDALossConfig, SDAMethod, build_gan_scheduler

TARGET_RATIO = 1.15
WARMUP_ITERS = 2
P, K, TARGET_BATCH = 4, 4, 16
ADAM = OptimizerConfig(name="adam", lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0)
POOL = 50


class NoiseBatch(Dataset):
    """``P × K`` fixed-seed normalized noise images; identity ``i // K``."""

    def __init__(self, height: int, width: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(P * K, 3, height, width, generator=g)
        self.pids = torch.arange(P).repeat_interleave(K)

    def __len__(self) -> int:
        return P * K

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "pid": self.pids[i]}


class OneBatchSampler:
    def set_epoch(self, epoch: int) -> None:
        pass

    def skip(self, num_batches: int) -> None:
        pass

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[list[int]]:
        yield list(range(P * K))


def networks(gen: GeneratorConfig, disc: DiscriminatorConfig, size: tuple[int, int]) -> dict[str, nn.Module]:
    """The six networks, seeded: the same weights on both sides."""
    torch.manual_seed(0)
    nets: dict[str, nn.Module] = {
        n: build_generator(gen, IMAGENET_MEAN, IMAGENET_STD) for n in ("g_st", "g_ts")
    }
    nets.update({n: build_discriminator(disc) for n in ("d_s", "d_t")})
    for name in ("e_s", "e_t"):
        model = build_reid_model({"backbone": "osnet_x0_25", "num_classes": P}).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        nets[name] = model
    return nets


def _named(nets: dict[str, nn.Module], names: tuple[str, ...]) -> list[tuple[str, nn.Parameter]]:
    return [(f"{n}.{k}", p) for n in names for k, p in nets[n].named_parameters()]


def bare_runner(
    nets: dict[str, nn.Module], batch: dict[str, Tensor], target: Tensor, relation: bool
) -> Callable[[], float]:
    g_st, g_ts, d_s, d_t, e_s, e_t = (nets[n] for n in ("g_st", "g_ts", "d_s", "d_t", "e_s", "e_t"))
    g_params = [p for n in ("g_st", "g_ts") for p in nets[n].parameters()]
    g_opt = build_optimizer(_named(nets, ("g_st", "g_ts")), ADAM)
    d_opt = build_optimizer(_named(nets, ("d_s", "d_t")), ADAM)
    pools = ImagePool(POOL, seed=1), ImagePool(POOL, seed=2)
    x_s, labels, x_t = batch["image"], batch["pid"], target

    def run() -> float:
        start = time.perf_counter()
        fake_t, fake_s = g_st(x_s), g_ts(x_t)
        rec_s, rec_t = g_ts(fake_t), g_st(fake_s)
        pred_t, pred_s = d_t(fake_t), d_s(fake_s)
        loss = F.mse_loss(pred_t, torch.ones_like(pred_t)) + F.mse_loss(pred_s, torch.ones_like(pred_s))
        loss = loss + 10.0 * (F.l1_loss(rec_s, x_s) + F.l1_loss(rec_t, x_t))
        loss = loss + 5.0 * (F.l1_loss(g_st(x_t), x_t) + F.l1_loss(g_ts(x_s), x_s))
        if relation:
            with torch.no_grad():
                e2 = e_s(x_s)
            e1 = e_t(fake_t)
            d1 = torch.cdist(e1, e1)
            same = labels[:, None] == labels[None, :]
            pos = d1.detach().masked_fill(~same, float("-inf")).argmax(1)
            neg = d1.detach().masked_fill(same, float("inf")).argmin(1)
            rows = torch.arange(len(labels))
            with torch.no_grad():
                d2 = torch.cdist(e2, e2)
                ref = torch.softmax(torch.stack([d2[rows, pos], d2[rows, neg]], 1), 1)
            logp = torch.log_softmax(torch.stack([d1[rows, pos], d1[rows, neg]], 1), 1)
            loss = loss + -(ref * logp).sum(1).mean()
        g_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=g_params)
        g_opt.step()
        pooled_t, pooled_s = pools[0].query(fake_t.detach()), pools[1].query(fake_s.detach())
        real_t, fake_pt, real_s, fake_ps = d_t(x_t), d_t(pooled_t), d_s(x_s), d_s(pooled_s)
        loss_d = 0.5 * (
            F.mse_loss(real_t, torch.ones_like(real_t)) + F.mse_loss(fake_pt, torch.zeros_like(fake_pt))
        )
        loss_d = loss_d + 0.5 * (
            F.mse_loss(real_s, torch.ones_like(real_s)) + F.mse_loss(fake_ps, torch.zeros_like(fake_ps))
        )
        d_opt.zero_grad(set_to_none=True)
        loss_d.backward()
        d_opt.step()
        return time.perf_counter() - start

    return run


def engine_runner(
    nets: dict[str, nn.Module], loader: DataLoader, target: Tensor, size: tuple[int, int]
) -> Callable[[], float]:
    g_opt = build_optimizer(_named(nets, ("g_st", "g_ts")), ADAM)
    d_opt = build_optimizer(_named(nets, ("d_s", "d_t")), ADAM)
    schedule = GanScheduleConfig(constant_epochs=50, decay_epochs=50)
    wrap = {
        n: EncoderInput(nets[n], IMAGENET_MEAN, IMAGENET_STD, IMAGENET_MEAN, IMAGENET_STD, size)
        for n in ("e_s", "e_t")
    }
    method = SDAMethod(
        {n: nets[n] for n in ("g_st", "g_ts")},
        {n: nets[n] for n in ("d_s", "d_t")},
        g_opt,
        d_opt,
        build_gan_scheduler(g_opt, schedule, 200),
        build_gan_scheduler(d_opt, schedule, 200),
        SDALossConfig(pool_size=POOL),
        nn.Identity(),
        lambda iteration, device: target,
        source_encoder=wrap["e_s"],
        target_encoder=wrap["e_t"],
    )
    engine = Engine(method, loader, EngineConfig(max_iters=1, device="cpu"), default_hooks=False)
    engine.bind()
    ctx = engine.ctx
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


def translate_throughput(gen: GeneratorConfig, height: int, width: int, images: int) -> dict[str, Any]:
    """Images/s of the translate path (decode, generator, JPEG, shard writer) vs the generator alone."""
    torch.manual_seed(0)
    generator = build_generator(gen, IMAGENET_MEAN, IMAGENET_STD).eval()
    tcfg = TransformConfig(height=height, width=width)
    cfg = TranslateConfig()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="reidflow-bench-sda-") as tmp:
        root, raw = Path(tmp), Path(tmp) / "raw"
        raw.mkdir()
        samples = []
        for i in range(images):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                buffer, format="JPEG"
            )
            (raw / f"{i:05d}.jpg").write_bytes(buffer.getvalue())
            samples.append(
                Sample(path=f"{i:05d}.jpg", pid=i % 10, camid=i % 3, domain="bench", split="train")
            )
        dataset = write_shards(samples, root / "shards", dataset="bench", root=raw).dataset_dir
        start = time.perf_counter()
        translate_dataset(dataset, root / "out", generator, tcfg, cfg)
        stage_s = time.perf_counter() - start
    x = torch.randn(images, 3, height, width, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, images, cfg.batch_size):
            generator(x[i : i + cfg.batch_size])
    bare_s = time.perf_counter() - start
    return {
        "images": images,
        "batch_size": cfg.batch_size,
        "translate_images_per_s": round(images / stage_s, 1),
        "generator_images_per_s": round(images / bare_s, 1),
        "ratio": round(stage_s / bare_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64x32, small networks, 3 timed iterations")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 10, --quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.iters is not None and args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.quick:
        height, width, iters, translate_images = 64, 32, args.iters or 3, 128
        gen, disc = GeneratorConfig(ngf=16, n_blocks=3), DiscriminatorConfig(ndf=16, n_layers=3)
    else:
        height, width, iters, translate_images = 128, 64, args.iters or 10, 512
        gen, disc = GeneratorConfig(ngf=32, n_blocks=6), DiscriminatorConfig(ndf=32, n_layers=3)
    size = (height, width)
    data = NoiseBatch(height, width)
    loader = DataLoader(data, batch_sampler=OneBatchSampler())
    batch = next(iter(loader))
    target = torch.randn(TARGET_BATCH, 3, height, width, generator=torch.Generator().manual_seed(1))
    runners = {
        "bare": bare_runner(networks(gen, disc, size), batch, target, relation=True),
        "engine": engine_runner(networks(gen, disc, size), loader, target, size),
        "bare_cyclegan": bare_runner(networks(gen, disc, size), batch, target, relation=False),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(WARMUP_ITERS + iters):
        for name, run in runners.items():
            seconds = run()
            if i >= WARMUP_ITERS:
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["engine"] / median["bare"]
    report = {
        "benchmark": "sda_iteration",
        "input_size": [height, width],
        "generator": gen.model_dump(),
        "discriminator": disc.model_dump(),
        "encoders": "osnet_x0_25 (frozen)",
        "batch": {"p": P, "k": K, "target": TARGET_BATCH},
        "threads": torch.get_num_threads(),
        "warmup_iters": WARMUP_ITERS,
        "timed_iters": iters,
        "bare_seconds": round(median["bare"], 4),
        "engine_seconds": round(median["engine"], 4),
        "bare_cyclegan_seconds": round(median["bare_cyclegan"], 4),
        "ratio": round(ratio, 3),
        "relation_share": round(1 - median["bare_cyclegan"] / median["bare"], 3),
        "ratio_vs_bare_cyclegan": round(median["engine"] / median["bare_cyclegan"], 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
        "translate": translate_throughput(gen, height, width, translate_images),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
