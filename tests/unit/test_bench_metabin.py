"""``bench/bench_metabin.py --quick`` runs end to end and prints one JSON object with positive timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMINGS = ("baseline_seconds", "metabin_first_order_seconds", "metabin_second_order_seconds")


@pytest.mark.integration
def test_quick_benchmark_prints_one_json_report() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_metabin.py"), "--quick", "--threads", "1"],
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

    expected = {"backbone", "input_size", "batch", *TIMINGS, "ratio", "ratio_second_order"}
    assert expected | {"target_ratio", "meets_target"} <= report.keys()
    assert report["backbone"] == "osnet_x0_25"
    assert report["input_size"] == [64, 32]
    assert report["timed_iters"] == 3
    assert all(report[key] > 0 for key in TIMINGS), report
    assert report["ratio"] == pytest.approx(
        report["metabin_first_order_seconds"] / report["baseline_seconds"], rel=0.01
    )
    assert report["target_ratio"] == 2.5
    assert report["meets_target"] is (report["ratio"] <= 2.5)
