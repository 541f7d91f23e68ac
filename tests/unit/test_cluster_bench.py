"""``bench/bench_pseudo_labels.py --quick`` runs end to end and prints one JSON report in which the
sparse pseudo labels equal the dense baseline's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_quick_benchmark_reports_identical_clusters() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_pseudo_labels.py"), "--quick", "--threads", "1"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    report = json.loads(lines[0])
    (run,) = report["runs"]
    assert run["n"] == 2000 and run["ari_sparse_vs_dense"] == 1.0
    for kind in ("sparse", "dense"):
        assert run[kind]["seconds"] > 0 and run[kind]["peak_rss_mb"] > 0
        assert run[kind]["clusters"] > 50 and run[kind]["ari_vs_truth"] > 0.99
    assert run["speedup"] > 0 and run["memory_ratio"] > 0 and isinstance(run["meets_target"], bool)
