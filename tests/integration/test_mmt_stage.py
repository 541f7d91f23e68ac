"""`reidflow mmt` end to end on tiny synthetic data: synth -> shard -> pretrain (two seeds) -> mmt
-> evaluate reads the adapted model as it is; lineage names every input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import reidflow, tiny_params, write_params

pytestmark = pytest.mark.integration

MMT_SECTION = {
    "seed": 0,
    "transforms": {"height": 64, "width": 32, "erasing_p": 0.5},
    "P": 4,
    "K": 2,
    "iters_per_epoch": 2,
    "num_workers": 0,
    "feature_batch_size": 32,
    "engine": {"epochs": 2, "checkpoint_every": 2, "log_every": 1},
    "method": {"moco_queue_size": 16, "cluster": {"k1": 6, "k2": 2, "eps": 0.7, "min_samples": 2}},
}


def test_mmt_stage_adapts_two_pretrained_models_and_evaluate_reads_the_result(tmp_path: Path) -> None:
    params = tiny_params()
    params["mmt"] = MMT_SECTION
    write_params(tmp_path / "params.yaml", params)
    env = {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    reidflow("synth", "--output", "data/synth", cwd=tmp_path, env=env)
    for name in ("mall_warm", "night_station", "target_city"):
        reidflow("shard", "-d", name, "--output", f"shards/{name}", cwd=tmp_path, env=env)
    sources = ["--input", "source=shards/mall_warm", "--input", "source=shards/night_station"]
    for seed in (0, 1):
        reidflow(
            "pretrain", "--output", f"models/seed{seed}", *sources, "--input", "target=shards/target_city",
            "--set", f"pretrain.seed={seed}", "--set", "pretrain.eval.enabled=false", cwd=tmp_path, env=env,
        )  # fmt: skip
    models = ["--input", "model=models/seed0", "--input", "model=models/seed1"]
    reidflow("mmt", "--output", "models/mmt", *models, *sources, "--input", "target=shards/target_city",
             "--set", "mmt.export=both", cwd=tmp_path, env=env)  # fmt: skip

    out = tmp_path / "models" / "mmt"
    meta = json.loads((out / "model.json").read_text())
    assert meta["method"] == "mmt+" and meta["model"]["classifier"] == "arcface"
    assert meta["model"]["num_classes"] == meta["num_source_ids"] + meta["num_clusters"]
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["pseudo_labels"]
    assert [r["epoch"] for r in history] == [0, 1]
    assert all(r["clusters"] >= 1 and 0 <= r["purity"] <= 1 for r in history)
    assert (out / "pseudo_labels.png").is_file() and (out / "pseudo_labels.json").is_file()
    lineage = json.loads((out / "lineage.json").read_text())
    names = sorted(i["name"] for i in lineage["inputs"])
    assert names == ["model1", "model2", "source0", "source1", "target"]
    state_keys = json.loads((out / "model.json").read_text())["model"]
    assert state_keys["norm"] == "bn"  # DSBN folded: a plain-BN model
    second = tmp_path / "models" / "mmt-mean2"  # export: both -> the other mean net beside the output
    meta2 = json.loads((second / "model.json").read_text())
    assert meta["exported"] == "mean1" and meta2["exported"] == "mean2"
    assert meta2["name"].endswith("-mean2") and meta2["num_clusters"] == meta["num_clusters"]
    assert (second / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()
    reidflow("lineage", "verify", "models/mmt-mean2", cwd=tmp_path, env=env)

    reidflow(
        "evaluate", "--output", "eval", "--input", "model=models/mmt", "--input", "eval=shards/target_city",
        "--set", "evaluate.camera.enabled=false", "--set", "evaluate.report.embedding=none",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert (tmp_path / "eval" / "metrics.json").is_file()
    bad = reidflow("mmt", "--output", "models/bad", "--input", "model=models/seed0", *sources,
                   "--input", "target=shards/target_city", cwd=tmp_path, env=env, check=False)  # fmt: skip
    assert bad.returncode == 2 and "expected exactly two --input model=URI" in bad.stderr
