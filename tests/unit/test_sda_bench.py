"""``bench/bench_sda.py --quick`` runs end to end and prints one JSON object with positive timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_quick_benchmark_prints_one_json_report() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_sda.py"), "--quick", "--threads", "1", "--iters", "1"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    report = json.loads(lines[0])
    assert report["benchmark"] == "sda_iteration"
    for key in ("bare_seconds", "engine_seconds", "bare_cyclegan_seconds"):
        assert report[key] > 0, key
    assert report["ratio"] == pytest.approx(report["engine_seconds"] / report["bare_seconds"], rel=0.01)
    assert report["meets_target"] == (report["ratio"] <= report["target_ratio"])
    translate = report["translate"]
    assert translate["translate_images_per_s"] > 0 and translate["generator_images_per_s"] > 0
