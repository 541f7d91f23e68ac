"""`reidflow dg-benchmark` end to end on tiny data: synth -> shard -> every variant x seed trained by the
real stages -> multi-split evaluation on unseen targets -> table, plot and a report artifact whose
lineage lists every run; a rerun reuses every finished run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import TINY_DOMAIN, reidflow, repo_params, write_params

pytestmark = pytest.mark.integration
ENV = {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
TINY = {**TINY_DOMAIN, "distractors": 0}


def tiny_benchmark() -> dict:
    """The repo's dg_benchmark section, shrunk: 3 sources, 2 targets, BN / BIN / MetaBIN / SNR, 2 seeds."""
    bench = repo_params()["dg_benchmark"]
    names = ["mall_warm", "night_station", "foggy_campus", "personx_like", "target_city"]
    bench["synth"] = {"seed": 0, "workers": 1, "domains": [{"preset": n, "overrides": TINY} for n in names]}
    bench["sources"], bench["targets"] = names[:3], names[3:]
    bench["seeds"] = [0, 1]
    bench["num_splits"] = 3
    bench["recipe"]["sampler"] = {"P": 4, "K": 2}
    bench["recipe"]["engine"] = {"epochs": 1, "max_iters": 2, "device": "cpu", "log_every": 1}
    bench["recipe"]["scheduler"] = {"kind": "constant"}
    bench["drawn"] = {"count": 1, "seed": 3, "overrides": TINY}
    bench["variants"] = {k: bench["variants"][k] for k in ("BN", "BIN", "MetaBIN", "MetaBIN-diffclamp")}
    for name in ("MetaBIN", "MetaBIN-diffclamp"):
        bench["variants"][name]["overrides"]["meta_batch"] = {"ids_per_domain": 2, "K": 2}
        bench["variants"][name]["overrides"]["meta"]["warmup_iters"] = 1
    return bench


def test_benchmark_end_to_end_and_resume(tmp_path: Path):
    write_params(tmp_path / "params.yaml", {"dg_benchmark": tiny_benchmark()})
    args = ["dg-benchmark", "--workdir", "work", "--table", "docs/results/dg.md"]
    first = reidflow(*args, cwd=tmp_path, env=ENV)
    assert "training (metabin)" in first.stderr and "training (pretrain)" in first.stderr
    report = tmp_path / "work" / "report"
    results = json.loads((report / "results.json").read_text())
    assert list(results["table"]) == ["BN", "BIN", "MetaBIN", "MetaBIN-diffclamp"]
    for cell in results["table"].values():
        assert cell["seeds"] == [0, 1]
        for group in ("hand-written", "drawn"):
            assert (
                0 <= cell["groups"][group]["mAP"]["mean"] <= 100 and cell["groups"][group]["mAP"]["std"] >= 0
            )
        assert set(cell["targets"]) == {"personx_like", "target_city", "drawn_00"}
    assert set(results["claims"]) == {"hand-written", "drawn"}
    assert set(results["claims"]["drawn"]) == {"BN", "BIN"}  # the rivals present in this table
    assert set(results["ablations"]) == {"MetaBIN-diffclamp"}
    assert len(results["runs"]) == 8
    assert (tmp_path / "work" / "runs" / "MetaBIN-seed0" / "gate_trajectories.png").is_file()
    assert (tmp_path / "work" / "runs" / "BIN-seed0" / "gate_trajectories.json").is_file()
    splits = json.loads((report / "splits.json").read_text())
    assert len(splits["target_city"]) == 3 and splits["target_city"][0]["query_keys"]
    lineage = json.loads((report / "lineage.json").read_text())
    assert lineage["stage"] == "dg_benchmark"
    assert len(lineage["inputs"]) == 8 + 3  # every trained run and every target shard
    run_stages = {
        json.loads((tmp_path / "work" / "runs" / f"{v}-seed0" / "lineage.json").read_text())["stage"]
        for v in ("BN", "MetaBIN")
    }
    assert run_stages == {"pretrain", "metabin"}
    table = (tmp_path / "docs/results/dg.md").read_text()
    assert "| MetaBIN |" in table and "reidflow dg-benchmark --workdir work" in table
    assert (
        "![mean ± std over seeds, and per target](dg.png)" in table
        and (tmp_path / "docs/results/dg.png").is_file()
    )
    reidflow("lineage", "verify", "work/report", cwd=tmp_path, env=ENV)

    again = reidflow(*args, "--output", "work/report2", cwd=tmp_path, env=ENV)
    assert "training (" not in again.stderr and again.stderr.count("already trained, kept") == 8
    rerun = json.loads((tmp_path / "work/report2/results.json").read_text())
    assert rerun["table"] == results["table"], "same models, same splits, same numbers"


def test_config_errors_name_the_key(tmp_path: Path):
    bench = tiny_benchmark()
    bench["targets"] = ["mall_warm", "target_city"]
    write_params(tmp_path / "params.yaml", {"dg_benchmark": bench})
    proc = reidflow("dg-benchmark", "--workdir", "w", cwd=tmp_path, env=ENV, check=False)
    assert proc.returncode != 0 and "targets must be unseen" in proc.stderr
    bench = tiny_benchmark()
    bench["variants"]["MetaBIN"]["overrides"]["model"] = {"norm": "bn"}
    write_params(tmp_path / "params.yaml", {"dg_benchmark": bench})
    proc = reidflow("dg-benchmark", "--workdir", "w", cwd=tmp_path, env=ENV, check=False)
    assert proc.returncode != 0 and "dg_benchmark.variants.MetaBIN" in proc.stderr
    assert not (tmp_path / "w").exists(), "validation happens before any work"
