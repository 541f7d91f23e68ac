"""Decoded + augmented images/s through the index-based loader vs two baselines, same run.

- indexed: ShardIndex + LocalOpener (pread of (shard, offset, size)) -> decode/resize in 2 workers
  -> batched train transform in the main process.
- folder:  a plain folder-of-JPEGs torch Dataset (open file, Pillow decode, same resize), same
  batches, same 2 workers, same batched transform.
- bare:    decode + resize of the same JPEG bytes already in memory, one process, no loader.

Data: ~3,000 smooth random 128x64 JPEGs (~7 KB) generated into a temp dir (page cache warm for
both loaders). Prints one JSON object. Throughput on a shared 2-core machine is noisy, so the
per-item CPU time of both datasets (decode + resize, in-process, ``time.process_time``) is reported
as well.

    python bench/bench_loader.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from reidflow.data.index import ShardIndex
from reidflow.data.loader import IndexedImageDataset, decode_resized, make_train_loader
from reidflow.data.opener import LocalOpener
from reidflow.data.sample import Sample
from reidflow.data.sampling import IdentityBatchSampler
from reidflow.data.shards import write_shards
from reidflow.data.transforms import TransformConfig, build_train_transform


def make_images(root: Path, count: int, per_id: int = 8, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        coarse = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
        image = np.asarray(
            Image.fromarray(coarse).resize((64, 128), Image.Resampling.BICUBIC), dtype=np.int16
        )
        image = np.clip(image + rng.normal(0, 16, image.shape), 0, 255).astype(np.uint8)
        pid, camid = i // per_id, i % 6
        name = f"{pid:05d}_c{camid + 1}_{i:06d}.jpg"
        Image.fromarray(image).save(root / name, format="JPEG", quality=95)
        samples.append(Sample(name, pid, camid, "bench", "train"))
    return samples


class FolderDataset(Dataset):
    """The baseline: one JPEG file per sample, same decode + resize as the indexed dataset."""

    def __init__(self, files: list[Path], labels: np.ndarray, height: int, width: int) -> None:
        self.files, self.labels, self.height, self.width = files, labels, height, width

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        array = decode_resized(self.files[i].read_bytes(), self.height, self.width, str(self.files[i]))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))),
            "pid": int(self.labels[i]),
            "index": i,
        }


def time_loader(loader, sampler, transform, epoch: int) -> float:
    sampler.set_epoch(epoch)
    images = 0
    start = time.perf_counter()
    for batch in loader:
        out = transform(batch["image"])
        images += out.shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    count = 640 if args.quick else args.images
    repeats = 2 if args.quick else args.repeats
    torch.set_num_threads(1)  # 2 cores: 2 workers decode, the main process augments
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        root = Path(tmp) / "raw"
        root.mkdir()
        samples = make_images(root, count)
        write_shards(samples, Path(tmp) / "shards", "bench", root, shard_max_bytes=8 * 2**20)
        index = ShardIndex.load(Path(tmp) / "shards" / "bench")
        labels = index.global_pids()[0]
        transform = build_train_transform(TransformConfig(height=args.height, width=args.width))
        num_batches = len(index) // 64

        indexed = IndexedImageDataset(index, LocalOpener(index.root), args.height, args.width, labels)
        folder = FolderDataset(
            [root / s for s in index.table.column("source").to_pylist()], labels, args.height, args.width
        )
        loaders = {}
        for name, dataset in (("indexed", indexed), ("folder", folder)):
            sampler = IdentityBatchSampler(labels, P=16, K=4, seed=0, num_batches=num_batches)
            loaders[name] = (make_train_loader(dataset, sampler, num_workers=args.workers), sampler)
            time_loader(*loaders[name], transform, epoch=99)  # start workers, warm caches

        rates: dict[str, list[float]] = {"indexed": [], "folder": []}
        for r in range(repeats):  # interleaved, order alternating, so load changes hit both alike
            names = list(loaders) if r % 2 == 0 else list(reversed(loaders))
            for name in names:
                loader, sampler = loaders[name]
                rates[name].append(time_loader(loader, sampler, transform, epoch=r))

        # CPU time per item in this process: insensitive to other load on the machine.
        item_cpu_us = {}
        for name, dataset in (("indexed", indexed), ("folder", folder)):
            start = time.process_time()
            for i in range(len(dataset)):
                dataset[i]
            item_cpu_us[name] = (time.process_time() - start) / len(dataset) * 1e6

        payloads = [index.read_image_bytes(i, LocalOpener(index.root)) for i in range(len(index))]
        bare = []
        for _ in range(repeats):
            start = time.perf_counter()
            for data in payloads:
                decode_resized(data, args.height, args.width)
            bare.append(len(payloads) / (time.perf_counter() - start))
        mean_bytes = float(np.mean([len(p) for p in payloads]))

    indexed_rate = float(np.median(rates["indexed"]))
    folder_rate = float(np.median(rates["folder"]))
    bare_rate = float(np.median(bare))
    print(
        json.dumps(
            {
                "benchmark": "loader_decoded_augmented_images_per_s",
                "quick": args.quick,
                "images": count,
                "mean_jpeg_bytes": round(mean_bytes),
                "size": f"{args.height}x{args.width}",
                "workers": args.workers,
                "batch": 64,
                "indexed_images_per_s": round(indexed_rate, 1),
                "folder_baseline_images_per_s": round(folder_rate, 1),
                "bare_decode_images_per_s_one_process": round(bare_rate, 1),
                "ratio_indexed_vs_folder": round(indexed_rate / folder_rate, 3),
                "ratio_indexed_vs_bare_decode": round(indexed_rate / bare_rate, 3),
                "item_cpu_us_indexed": round(item_cpu_us["indexed"], 1),
                "item_cpu_us_folder": round(item_cpu_us["folder"], 1),
                "ratio_item_cpu_folder_vs_indexed": round(item_cpu_us["folder"] / item_cpu_us["indexed"], 3),
                "runs": {
                    "indexed": [round(x, 1) for x in rates["indexed"]],
                    "folder": [round(x, 1) for x in rates["folder"]],
                    "bare": [round(x, 1) for x in bare],
                },
            }
        )
    )


if __name__ == "__main__":
    main()
