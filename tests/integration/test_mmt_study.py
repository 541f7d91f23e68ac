"""`reidflow mmt-study` end to end on tiny data (one source, one target, one seed, a few iterations):
synth -> shard -> pretrain x 2 -> MMT and MMT+ -> table, plots and a report artifact whose lineage lists
every run; a rerun keeps every step; --target trains a subset and writes no report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import TINY_DOMAIN, reidflow, repo_params, write_params

pytestmark = pytest.mark.integration
ENV = {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
TINY = {**TINY_DOMAIN, "distractors": 0}


def tiny_study() -> dict:
    """The repo's mmt_study section, shrunk to seconds (2 pretrain iterations, 2 MMT epochs of 1)."""
    study = repo_params()["mmt_study"]
    study["synth"] = {
        "seed": 0,
        "workers": 1,
        "domains": [{"preset": n, "overrides": TINY} for n in ("mall_warm", "target_city")],
    }
    study["sources"], study["targets"], study["seeds"] = ["mall_warm"], ["target_city"], [0]
    study["drawn"] = {"count": 0}
    study["device"] = "cpu"
    p = study["pretrain"]
    p["sampler"] = {"kind": "identity", "P": 4, "K": 2}
    p["scheduler"] = {"kind": "constant", "warmup": 0}
    p["engine"] = {"epochs": 1, "max_iters": 2, "log_every": 1}
    p["target_bn"] = {"enabled": True, "batch_size": 8}
    m = study["mmt"]
    m.update({"P": 4, "K": 2, "iters_per_epoch": 1, "feature_batch_size": 32})
    m["engine"] = {"epochs": 2, "log_every": 1}
    m["method"] = {"moco_queue_size": 16, "cluster": {"k1": 6, "k2": 2, "eps": 0.7, "min_samples": 2}}
    study["variants"] = {"MMT": {"method": {"mode": "mmt"}}, "MMT+": {"method": {"mode": "mmt+"}}}
    return study


def test_study_end_to_end_and_resume(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", {"mmt_study": tiny_study()})
    subset = reidflow("mmt-study", "--workdir", "work", "--target", "target_city", cwd=tmp_path, env=ENV)
    assert subset.stderr.count(": running") == 4 and "no report" in subset.stderr
    assert not (tmp_path / "work" / "report").exists()
    args = ["mmt-study", "--workdir", "work", "--table", "docs/results/mmt.md"]
    first = reidflow(*args, cwd=tmp_path, env=ENV)
    assert ": running" not in first.stderr and first.stderr.count("already made, kept") == 4

    report = tmp_path / "work" / "report"
    results = json.loads((report / "results.json").read_text())
    assert list(results["table"]) == ["direct transfer", "MMT", "MMT+"]
    for cell in results["table"].values():
        assert 0 <= cell["average"]["target_mAP"]["mean"] <= 100
        assert cell["average"]["target_mAP"]["std"] == 0  # one seed
        assert cell["average"]["target_mAP"] == cell["targets"]["target_city"]["target_mAP"]
    assert set(results["claims"]["average"]) == {"MMT+ vs direct transfer", "MMT+ vs MMT"}
    assert [len(c) for c in results["purity"]["MMT+"].values()] == [2]  # one purity per epoch

    runs = tmp_path / "work" / "runs" / "target_city"
    net1, net2 = (json.loads((runs / f"net{i}-seed0" / "lineage.json").read_text()) for i in (1, 2))
    assert (net1["params"]["seed"], net2["params"]["seed"]) == (0, 1)
    assert net1["params"]["eval"]["enabled"] is False  # no target labels in training/model selection
    plus = json.loads((runs / "MMTplus-seed0" / "lineage.json").read_text())
    orig = json.loads((runs / "MMT-seed0" / "lineage.json").read_text())
    assert plus["params"]["method"]["mode"] == "mmt+" and plus["params"]["method"]["dsbn"] is True
    assert orig["params"]["method"]["mode"] == "mmt" and orig["params"]["method"]["use_source"] is False
    digests = [net1["artifact"]["digest"], net2["artifact"]["digest"]]
    assert [i["digest"] for i in plus["inputs"]][:2] == digests  # adapted from the two pretrained nets

    table = (tmp_path / "docs/results/mmt.md").read_text()
    for row in ("| direct transfer |", "| MMT |", "| MMT+ |"):
        assert row in table
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    assert header.endswith("target mAP % |")  # the last column is the target mAP
    assert "reidflow mmt-study --workdir work" in table
    for image in ("mmt.png", "mmt_purity.png"):
        assert f"]({image})" in table and (tmp_path / "docs/results" / image).is_file(), image
    lineage = json.loads((report / "lineage.json").read_text())
    assert lineage["stage"] == "mmt_study" and len(lineage["inputs"]) == 4 + 2  # 4 runs, 2 shard sets
    reidflow("lineage", "verify", "work/report", cwd=tmp_path, env=ENV)

    bad = reidflow(
        "mmt-study", "--workdir", "work", "--target", "nowhere", cwd=tmp_path, env=ENV, check=False
    )
    assert bad.returncode == 2 and "nowhere" in bad.stderr
