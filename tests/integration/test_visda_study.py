"""`reidflow visda-study` end to end on tiny data (one target, one seed, two tiny backbones, a few
iterations per stage): the whole chain, the table, the claims and a report artifact whose lineage lists
every model; a rerun keeps every step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import TINY_DOMAIN, reidflow, repo_params, write_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ENV = {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
TINY = {**TINY_DOMAIN, "distractors": 0}


def tiny_study() -> dict:
    study = repo_params()["visda_study"]
    study["synth"] = {
        "seed": 0,
        "workers": 1,
        "domains": [{"preset": n, "overrides": TINY} for n in ("personx_like", "target_city")],
    }
    study["targets"], study["seeds"], study["drawn"], study["device"] = (
        ["target_city"],
        [0],
        {"count": 0},
        "cpu",
    )
    study["backbones"], study["sda_encoder"] = ["osnet_x0_25", "resnest26_x0_25"], "osnet_x0_25"
    for key in ("pretrain", "camera"):
        p = study[key]
        p["sampler"] = (
            {"kind": "identity", "P": 4, "K": 2}
            if key == "pretrain"
            else {"kind": "identity", "P": 3, "K": 4}
        )
        p["scheduler"] = {"kind": "constant", "warmup": 0}
        p["engine"] = {"epochs": 1, "max_iters": 2, "log_every": 1}
    study["pretrain"]["target_bn"] = {"enabled": True, "batch_size": 8}
    sda = study["sda"]
    sda.update(
        {"target_batch_size": 4, "identity_warmup_iters": 1, "samples": 2, "sampler": {"P": 3, "K": 2}}
    )
    sda["transforms"] = {**sda["transforms"], "height": 32, "width": 16, "pad": 2}
    sda["generator"], sda["discriminator"] = {"ngf": 4, "n_blocks": 1, "n_down": 2}, {"ndf": 4, "n_layers": 2}
    sda["loss"] = {**sda["loss"], "pool_size": 4}
    sda["schedule"] = {"constant_epochs": 1, "decay_epochs": 1}
    sda["engine"] = {"epochs": 2, "iters_per_epoch": 1, "log_every": 1}
    m = study["mmt"]
    m.update({"P": 4, "K": 2, "iters_per_epoch": 1, "feature_batch_size": 32})
    m["engine"] = {"epochs": 2, "log_every": 1}
    m["method"] = {"moco_queue_size": 16, "cluster": {"k1": 6, "k2": 2, "eps": 0.7, "min_samples": 2}}
    study["report"]["batch_size"] = 32
    return study


def test_study_end_to_end_and_resume(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", {"visda_study": tiny_study()})
    args = ["visda-study", "--workdir", "work", "--table", "docs/results/visda.md"]
    first = reidflow(*args, cwd=tmp_path, env=ENV)
    # per backbone 2 raw + 2 SDA nets, MMT and MMT+; SDA train and translate; the camera model
    assert first.stderr.count(": running") == 2 * 6 + 2 + 1
    again = reidflow(*args, cwd=tmp_path, env=ENV)
    assert ": running" not in again.stderr and again.stderr.count("already made, kept") == 15

    report = tmp_path / "work" / "report"
    results = json.loads((report / "results.json").read_text())
    assert list(results["table"]) == [
        "raw pretraining", "SDA pretraining", "MMT", "MMT+", "best single (MMT+)", "ensemble",
        "ensemble + camera", "ensemble + camera + re-ranking",
    ]  # fmt: skip
    for cell in results["table"].values():
        assert 0 <= cell["average"]["target_mAP"]["mean"] <= 100
        assert cell["average"]["target_mAP"]["std"] == 0  # one seed
    best = results["table"]["best single (MMT+)"]["average"]["target_mAP"]["mean"]
    assert best >= results["table"]["MMT+"]["average"]["target_mAP"]["mean"]  # the best of the MMT+ nets
    assert set(results["claims"]["average"]) == {
        "ensemble vs best single (MMT+)", "SDA pretraining vs raw pretraining", "MMT+ vs MMT",
    }  # fmt: skip
    assert set(results["per_backbone"]) == {"osnet_x0_25", "resnest26_x0_25"}
    md = (tmp_path / "docs/results/visda.md").read_text()
    assert "| ensemble |" in md and "reidflow visda-study" in md and "## Claims" in md
    assert (tmp_path / "docs/results/visda.png").stat().st_size > 1000
    lineage = json.loads((report / "lineage.json").read_text())
    names = {Path(i["uri"]).name for i in lineage["inputs"]}
    assert {"mmt_plus-resnest26_x0_25-seed0", "raw-osnet_x0_25-net2-seed0", "camera-seed0"} <= names
