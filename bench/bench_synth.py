"""Synthetic domain generation throughput (images/s written to disk) vs bare Pillow JPEG encoding.

- ours:     ``generate_domain`` of the ``target_city`` preset (occluders, blur, noise, JPEG) at
            128x64, with workers=1 and workers=2, process start-up and file writes included.
- baseline: Pillow encoding the same number of uniformly random 128x64 RGB arrays to JPEG (same
            quality and subsampling), one process, arrays made before the clock starts, nothing
            written. Random pixels are the costliest content for a JPEG encoder.

The ratio is our throughput over the bare encoder's. The machine may be shared, so CPU seconds
(this process plus its workers) are measured too: images per CPU second does not depend on how
much of the machine other processes take, and the 1-minute load average says how busy it was.
Prints one JSON object.

    python bench/bench_synth.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from reidflow.data.synth import generate_domain, load_preset
from reidflow.data.synth.plan import plan_domain

TARGET_IMAGES_PER_S = 300


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) worker processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_generation(spec, out_root: Path, workers: int) -> tuple[int, float, float]:
    """(images written, wall seconds, CPU seconds)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    root = generate_domain(spec, out_root, seed=0, workers=workers)
    elapsed, used = time.perf_counter() - start, cpu_seconds() - cpu
    return sum(1 for _ in root.rglob("*.jpg")), elapsed, used


def bare_encode(count: int, quality: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to encode ``count`` random crops."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (128, 64, 3), dtype=np.uint8) for _ in range(count)]
    start, cpu = time.perf_counter(), cpu_seconds()
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality, subsampling=2)
    return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 30 s)")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()

    identities = 50 if args.quick else 400
    spec = load_preset("target_city").model_copy(
        update={"identities": identities, "distractors": identities // 2}
    )
    images = sum(len(plan.shots) for plan in plan_domain(spec, 0))
    with tempfile.TemporaryDirectory(prefix="bench_synth-", dir=args.out) as scratch:
        rates, cpu_rates = {}, {}
        for workers in (1, 2):
            count, elapsed, used = timed_generation(spec, Path(scratch, f"w{workers}"), workers)
            assert count == images, (count, images)
            rates[workers], cpu_rates[workers] = count / elapsed, count / used
    baseline_wall, baseline_cpu = bare_encode(images, spec.style.jpeg_quality)
    baseline, baseline_per_cpu = images / baseline_wall, images / baseline_cpu
    print(
        json.dumps(
            {
                "benchmark": "synth",
                "preset": spec.name,
                "image_size": f"{spec.image.height}x{spec.image.width}",
                "images": images,
                "workers_1_images_per_s": round(rates[1], 1),
                "workers_2_images_per_s": round(rates[2], 1),
                "baseline_bare_jpeg_encode_images_per_s": round(baseline, 1),
                "ratio_workers_2_vs_bare_encode": round(rates[2] / baseline, 3),
                "ratio_workers_1_vs_bare_encode": round(rates[1] / baseline, 3),
                "images_per_cpu_second_workers_1": round(cpu_rates[1], 1),
                "images_per_cpu_second_workers_2": round(cpu_rates[2], 1),
                "baseline_images_per_cpu_second": round(baseline_per_cpu, 1),
                "ratio_per_cpu_second_workers_1_vs_bare_encode": round(cpu_rates[1] / baseline_per_cpu, 3),
                "target_images_per_s": TARGET_IMAGES_PER_S,
                "meets_target": rates[2] >= TARGET_IMAGES_PER_S,
                "load_average_1min": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
