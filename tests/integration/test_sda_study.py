"""`reidflow sda-study` end to end on tiny data (one source, one target, one seed, a few iterations):
synth -> shard -> raw pretrain -> CycleGAN and SDA train -> translate -> pretrain on each -> evidence
table, plot, sample grid and a report artifact whose lineage lists every run; a rerun keeps every step."""

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
    """The repo's sda_study section, shrunk to seconds (32x16 translation, 2 iterations everywhere)."""
    study = repo_params()["sda_study"]
    study["synth"] = {
        "seed": 0,
        "workers": 1,
        "domains": [{"preset": n, "overrides": TINY} for n in ("mall_warm", "target_city")],
    }
    study["sources"], study["targets"], study["seeds"] = ["mall_warm"], ["target_city"], [0]
    study["drawn"] = {"count": 0}
    study["device"] = "cpu"
    study["domain_classifier"] = {"max_images": 20}
    p = study["pretrain"]
    p["sampler"] = {"kind": "identity", "P": 4, "K": 2}
    p["scheduler"] = {"kind": "constant", "warmup": 0}
    p["engine"] = {"epochs": 1, "max_iters": 2, "log_every": 1}
    p["target_bn"] = {"enabled": True, "batch_size": 8}
    s = study["sda"]
    s["transforms"] = {"height": 32, "width": 16, "flip_p": 0.5, "pad": 2, "erasing_p": 0.0}
    s["generator"] = {"ngf": 4, "n_blocks": 1, "n_down": 2}
    s["discriminator"] = {"ndf": 4, "n_layers": 2}
    s["sampler"] = {"P": 3, "K": 2}
    s["target_batch_size"] = 4
    s["identity_warmup_iters"] = 1  # one warm-up iteration, then the full objective
    s["loss"]["pool_size"] = 4
    s["schedule"] = {"constant_epochs": 1, "decay_epochs": 1}
    s["engine"] = {"epochs": 2, "iters_per_epoch": 1, "log_every": 1}
    s["samples"] = 3
    return study


def test_study_end_to_end_and_resume(tmp_path: Path):
    write_params(tmp_path / "params.yaml", {"sda_study": tiny_study()})
    args = ["sda-study", "--workdir", "work", "--table", "docs/results/sda.md"]
    first = reidflow(*args, cwd=tmp_path, env=ENV)
    assert first.stderr.count(": running") == 7  # raw pretrain; per row: train, translate, pretrain
    report = tmp_path / "work" / "report"
    results = json.loads((report / "results.json").read_text())
    assert list(results["table"]) == ["raw", "CycleGAN", "SDA"]
    for cell in results["table"].values():
        assert set(cell["targets"]) == {"target_city"}
        for metric in ("domain_accuracy", "source_mAP", "target_mAP", "target_rank-1"):
            assert 0 <= cell["average"][metric]["mean"] <= 100, metric
            assert cell["average"][metric]["std"] == 0  # one seed
        assert cell["average"]["colour_distance"]["mean"] >= 0
        assert cell["average"]["target_mAP"] == cell["targets"]["target_city"]["target_mAP"]
    assert set(results["claims"]) == {"average", "target_city"}
    assert set(results["claims"]["average"]) == {"raw", "CycleGAN"}

    runs = tmp_path / "work" / "runs" / "target_city"
    sda = json.loads((runs / "SDA-generator-seed0" / "lineage.json").read_text())
    cyclegan = json.loads((runs / "CycleGAN-generator-seed0" / "lineage.json").read_text())
    raw_digest = json.loads((runs / "raw-seed0" / "lineage.json").read_text())["artifact"]["digest"]
    assert (
        sda["params"]["loss"]["relation_weight"] == 1.0 and cyclegan["params"]["loss"]["relation_weight"] == 0
    )
    assert [i["digest"] for i in sda["inputs"]][-2:] == [raw_digest, raw_digest]  # both frozen encoders
    assert raw_digest not in {i["digest"] for i in cyclegan["inputs"]}
    model = json.loads((runs / "SDA-seed0" / "lineage.json").read_text())
    translated = json.loads((runs / "SDA-translated-seed0" / "lineage.json").read_text())
    assert model["stage"] == "pretrain" and model["params"]["target_bn"]["enabled"] is True
    assert model["inputs"][0]["digest"] == translated["artifact"]["digest"]  # trained on the translation
    assert model["params"]["eval"]["enabled"] is False  # no target labels in training/model selection

    lineage = json.loads((report / "lineage.json").read_text())
    assert lineage["stage"] == "sda_study"
    assert len(lineage["inputs"]) == 5 + 2  # 3 models + 2 generators, then the 2 shard artifacts
    table = (tmp_path / "docs/results/sda.md").read_text()
    for row in ("| raw |", "| CycleGAN |", "| SDA |"):
        assert row in table
    headers = [line for line in table.splitlines() if line.startswith("| Training images")]
    assert len(headers) == 2 and all(h.endswith(("mAP % |", "(average) |")) for h in headers)
    assert "target mAP %" in table and "reidflow sda-study --workdir work" in table
    for image in ("sda.png", "sda_samples_target_city.png"):
        assert f"]({image})" in table and (tmp_path / "docs/results" / image).is_file(), image
    assert (report / "samples_target_city.png").is_file()
    reidflow("lineage", "verify", "work/report", cwd=tmp_path, env=ENV)

    again = reidflow(*args, "--output", "work/report2", cwd=tmp_path, env=ENV)
    assert ": running" not in again.stderr and again.stderr.count("already made, kept") == 7
    rerun = json.loads((tmp_path / "work/report2/results.json").read_text())
    assert rerun["table"] == results["table"], "same models, same numbers"
