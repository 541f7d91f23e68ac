"""The real stages chained through the CLI on tiny synthetic data: synth -> shard -> pretrain
(two backbones) -> camera model -> evaluate, then lineage show/verify/graph on the result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import reidflow, tiny_params, write_params

pytestmark = pytest.mark.integration
BACKBONES = ("osnet_x0_25", "mobilenetv2_x0_5")
SECRET = "chainSecretValueThatMustNeverLeak9876"


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chain")
    write_params(root / "params.yaml", tiny_params())
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "REIDFLOW_NO_PROGRESS": "1"}
    reidflow("synth", "--output", "data/synth", cwd=root, env=env)
    for name in ("mall_warm", "night_station", "target_city"):
        reidflow("shard", "-d", name, "--output", f"artifacts/shards/{name}", cwd=root, env=env)
    sources = [
        "--input",
        "source=artifacts/shards/mall_warm",
        "--input",
        "source=artifacts/shards/night_station",
    ]
    for backbone in BACKBONES:
        reidflow(
            "pretrain",
            "--backbone",
            backbone,
            "--output",
            f"artifacts/models/{backbone}",
            *sources,
            "--input",
            "target=artifacts/shards/target_city",
            cwd=root,
            env=env,
        )
    reidflow(
        "pretrain",
        "--section",
        "camera",
        "--output",
        "artifacts/models/camera",
        "--input",
        "source=artifacts/shards/target_city",
        cwd=root,
        env=env,
    )
    reidflow(
        "evaluate",
        "--output",
        "artifacts/evaluate",
        *[a for b in BACKBONES for a in ("--input", f"model=artifacts/models/{b}")],
        "--input",
        "camera=artifacts/models/camera",
        "--input",
        "eval=artifacts/shards/target_city",
        "--input",
        "eval=artifacts/shards/mall_warm",
        cwd=root,
        env=env,
    )
    return root


def test_every_artifact_is_complete_with_lineage(chain):
    for rel in (
        "data/synth",
        "artifacts/shards/mall_warm",
        "artifacts/models/osnet_x0_25",
        "artifacts/models/camera",
        "artifacts/evaluate",
    ):
        lineage = json.loads((chain / rel / "lineage.json").read_text())
        assert lineage["schema"] == "reidflow.lineage/1"
        assert lineage["code"]["version"]
    model = json.loads((chain / "artifacts/models/osnet_x0_25/lineage.json").read_text())
    assert [i["name"] for i in model["inputs"]] == ["source0", "source1", "target"]
    assert model["params"]["model"]["backbone"] == "osnet_x0_25"
    assert (chain / "artifacts/models/osnet_x0_25/model.safetensors").is_file()
    assert not (chain / "artifacts/models/osnet_x0_25.ckpt").exists(), "checkpoints are removed after success"
    metrics = json.loads((chain / "artifacts/models/osnet_x0_25/metrics.json").read_text())
    assert {"same_domain_mAP", "cross_domain_mAP"} <= set(metrics["eval"])


def test_evaluation_report_and_metrics(chain):
    out = chain / "artifacts/evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    target = metrics["targets"]["target_city"]["models"]
    assert set(target) == {*BACKBONES, "ensemble"}
    assert set(target["ensemble"]["variants"]) == {"plain", "camera", "rerank", "camera+rerank"}
    # the camera model only knows the target's cameras: no camera variant on a source domain
    assert set(metrics["targets"]["mall_warm"]["models"]["ensemble"]["variants"]) == {"plain", "rerank"}
    for v in target["ensemble"]["variants"].values():
        assert 0.0 <= v["mAP"] <= 1.0 and 0.0 <= v["rank1"] <= 1.0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "src='http" not in html
    md = (out / "report.md").read_text()
    for fig in ("figures/cmc_target_city.png", "figures/retrieval_target_city.png", "figures/embedding.png"):
        assert fig in md and (out / fig).is_file()
    assert list((out / "plots").glob("cmc_target_city_ensemble_*.csv"))


def test_lineage_show_graph_verify_and_tamper(chain):
    shown = reidflow("lineage", "show", "artifacts/evaluate", cwd=chain).stdout
    for word in ("evaluate", "pretrain", "shard", "raw data data/synth/mall_warm", "synth"):
        assert word in shown
    assert "flowchart LR" in reidflow("lineage", "graph", "artifacts/evaluate", cwd=chain).stdout
    assert (
        "digraph" in reidflow("lineage", "graph", "artifacts/evaluate", "--format", "dot", cwd=chain).stdout
    )
    reidflow("lineage", "verify", "artifacts/evaluate", cwd=chain)
    tar = min((chain / "artifacts/shards/mall_warm/mall_warm").glob("*.tar"))
    original = tar.read_bytes()
    tar.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        bad = reidflow("lineage", "verify", "artifacts/evaluate", cwd=chain, check=False)
        assert bad.returncode != 0
        assert f"mall_warm/{tar.name} changed" in bad.stderr
    finally:
        tar.write_bytes(original)


def test_no_secret_anywhere(chain):
    for path in chain.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".md", ".html", ".csv", ".yaml"}:
            assert SECRET not in path.read_text(errors="ignore"), path


def test_bad_input_errors_are_clear(chain):
    bad = reidflow("pretrain", "--output", "x", "--input", "source=artifacts/nope", cwd=chain, check=False)
    assert (
        bad.returncode == 2
        and "artifacts/nope does not exist" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    bad = reidflow(
        "pretrain",
        "--output",
        "x",
        "--set",
        "pretrain.optimizer.lr=-1",
        "--input",
        "source=artifacts/shards/mall_warm",
        cwd=chain,
        check=False,
    )
    assert bad.returncode == 2 and "pretrain.optimizer.lr" in bad.stderr
    bad = reidflow(
        "evaluate", "--output", "x", "--input", "modle=artifacts/models/camera", cwd=chain, check=False
    )
    assert bad.returncode == 2 and "unknown input name" in bad.stderr
    twice = ["--input", "eval=artifacts/shards/target_city"] * 2
    bad = reidflow("evaluate", "--output", "x", "--input", "model=artifacts/models/osnet_x0_25", *twice,
                   "--set", "evaluate.camera.enabled=false", cwd=chain, check=False)  # fmt: skip
    assert bad.returncode == 2 and "dataset 'target_city' is in two evaluation inputs" in bad.stderr
    assert not (chain / "x").exists()


def test_multi_split_protocol_records_splits_and_reports_mean_std(chain):
    reidflow(
        "evaluate", "--output", "artifacts/evaluate_splits",
        *[a for b in BACKBONES for a in ("--input", f"model=artifacts/models/{b}")],
        "--input", "eval=artifacts/shards/target_city", "--input", "eval=artifacts/shards/mall_warm",
        "--set", "evaluate.protocols={target_city: ilids, mall_warm: ilids}", "--set", "evaluate.num_splits=3",
        "--set", "evaluate.camera.enabled=false", "--set", "evaluate.report.embedding=none", cwd=chain,
    )  # fmt: skip
    out = chain / "artifacts/evaluate_splits"
    metrics = json.loads((out / "metrics.json").read_text())
    target = metrics["targets"]["target_city"]
    assert target["protocol"] == "ilids" and target["num_splits"] == 3
    assert 0 <= target["models"]["ensemble"]["std"]["mAP"] <= 1
    splits = json.loads((out / "splits/target_city.json").read_text())
    assert len(splits) == 3 and all(len(s["query"]) == len(s["query_keys"]) for s in splits)
    assert set(metrics["average_over_targets"]) == {*BACKBONES, "ensemble"}
    assert "mAP std" in (out / "report.md").read_text()


def test_same_seed_same_weights(chain):
    """The whole training run is a function of its inputs and seed (initialization included)."""
    args = [
        "pretrain",
        "--backbone",
        "osnet_x0_25",
        "--input",
        "source=artifacts/shards/mall_warm",
        "--input",
        "source=artifacts/shards/night_station",
        "--input",
        "target=artifacts/shards/target_city",
    ]
    reidflow(*args, "--output", "artifacts/models/again", cwd=chain)
    first = (chain / "artifacts/models/osnet_x0_25/model.safetensors").read_bytes()
    assert (chain / "artifacts/models/again/model.safetensors").read_bytes() == first
