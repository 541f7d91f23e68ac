"""The pipeline run end to end with kfp.local's subprocess runner on tiny synthetic data (CPU).

The runs are isolated (``run_local(isolated=True)``): every task runs as if in its own pod, with a
private working directory and outputs at pod-local paths that vanish after the task, so a path that
leaks from one task to another (instead of travelling as a declared input or an object-store URI)
fails here as it would on a cluster.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pipelines.reid_pipeline import ALL_STAGES
from pipelines.runner import LocalRun, run_local

ROOT = Path(__file__).resolve().parents[2]

# The stages the local run covers: a prefix of ALL_STAGES. Before pretrain/evaluate existed this was
# ("synth", "shard"); the whole chain runs now.
LOCAL_RUN_STAGES = ("synth", "shard", "pretrain", "evaluate")
TINY_DOMAIN = {
    "identities": 8,
    "cameras": 3,
    "cameras_per_identity": [2, 2],
    "images_per_identity_camera": [2, 3],
    "distractors": 0,
    "image": {"height": 64, "width": 32},
}


def tiny_params(**kfp: Any) -> dict[str, Any]:
    return {
        "synth": {
            "seed": 0,
            "workers": 1,
            "domains": [
                {"preset": "mall_warm", "overrides": TINY_DOMAIN},
                {"preset": "night_station", "overrides": TINY_DOMAIN},
            ],
        },
        "shard": {"shard_max_mb": 1},
        "datasets": {
            "mall_warm": {"reader": "market1501", "root": "data/synth/mall_warm", "role": "source"},
            "night_station": {"reader": "market1501", "root": "data/synth/night_station", "role": "target"},
        },
        "pretrain": {
            "model": {"backbone": "osnet_x0_25"},
            "transforms": {"height": 64, "width": 32},
            "sampler": {"P": 4, "K": 2},
            "engine": {"epochs": 1, "max_iters": 2, "device": "cpu"},
            "num_workers": 0,
            "eval": {"enabled": False},
        },
        "metabin": {  # one source: its cameras are the domains
            "model": {"backbone": "osnet_x0_25", "norm": "metabin"},
            "transforms": {"height": 64, "width": 32},
            "sampler": {"P": 4, "K": 2},
            "meta_batch": {"ids_per_domain": 2, "K": 2, "domains": "camera"},
            "meta": {"n_mtrain": 1},
            "engine": {"epochs": 1, "max_iters": 2, "device": "cpu"},
            "num_workers": 0,
            "eval": {"enabled": False},
        },
        "camera": {
            "labels": "camera",
            "model": {"backbone": "osnet_x0_25"},
            "transforms": {"height": 64, "width": 32},
            "sampler": {"P": 3, "K": 2},
            "loss": {"triplet_weight": 0.0},
            "engine": {"epochs": 1, "max_iters": 2, "device": "cpu"},
            "num_workers": 0,
            "eval": {"enabled": False},
        },
        "sda": {  # 32x16 translation, 2 iterations: the chain, not the quality
            "transforms": {"height": 32, "width": 16, "pad": 2},
            "generator": {"ngf": 4, "n_blocks": 1, "n_down": 2},
            "discriminator": {"ndf": 4, "n_layers": 2},
            "sampler": {"P": 3, "K": 2},
            "target_batch_size": 4,
            "loss": {"pool_size": 4},
            "schedule": {"constant_epochs": 1, "decay_epochs": 1},
            "engine": {"epochs": 2, "iters_per_epoch": 1, "device": "cpu"},
            "num_workers": 0,
            "samples": 2,
        },
        "mmt": {  # 1 epoch of 1 iteration: the wiring, not the quality
            "transforms": {"height": 64, "width": 32},
            "P": 4,
            "K": 2,
            "iters_per_epoch": 1,
            "feature_batch_size": 32,
            "engine": {"epochs": 1, "device": "cpu"},
            "num_workers": 0,
            "method": {"moco_queue_size": 16, "cluster": {"k1": 6, "k2": 2, "eps": 0.7, "min_samples": 2}},
        },
        "evaluate": {
            "device": "cpu",
            "batch_size": 32,
            "rerank": {"enabled": False},
            "camera": {"enabled": True},
            "report": {"embedding": "none", "retrieval_queries": 2},
        },
        "kfp": {"backbones": ["osnet_x0_25", "mobilenetv2_x0_5"], **kfp},
    }


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory for the run; tasks are subprocesses, so they get the repo via PYTHONPATH."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    return tmp_path


def lineage(path: Path) -> dict[str, Any]:
    return json.loads((path / "lineage.json").read_text())


@pytest.mark.integration
@pytest.mark.timeout(1500)  # 16 tasks, each a fresh interpreter; minutes on a busy 2-core machine
def test_local_pipeline_run_writes_kfp_lineage(workdir: Path) -> None:
    assert LOCAL_RUN_STAGES == ALL_STAGES[: len(LOCAL_RUN_STAGES)]
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    result = run_local(workdir / "params.yaml", workdir / "kfp-root", stages=LOCAL_RUN_STAGES, isolated=True)
    check_local_run(result)


def check_local_run(result: LocalRun) -> None:
    """What the run of :func:`tiny_params` must have produced (a function of its own, so the checks
    can be re-run on a kept run directory: ``check_local_run(collect_local_run(run_dir))``)."""
    expected = {"synth": 1, "shard": 2, "pretrain": 2, "metabin": 1, "evaluate": 1}
    ran = (*LOCAL_RUN_STAGES, "metabin") if "pretrain" in LOCAL_RUN_STAGES else LOCAL_RUN_STAGES
    assert {s: len(result.artifacts.get(s, [])) for s in ran} == {s: expected[s] for s in ran}
    records = {s: [lineage(p) for p in paths] for s, paths in result.artifacts.items()}
    for stage, recs in records.items():
        for rec in recs:
            assert rec["runtime"]["orchestrator"] == "kfp", stage
            assert rec["runtime"]["run_id"], stage
            assert rec["stage"] == stage
    assert len(records["synth"]) == 1
    assert sorted(p.name for p in result.artifacts["synth"][0].iterdir() if p.is_dir()) == [
        "mall_warm",
        "night_station",
    ]
    shard_by_dataset = {r["params"]["dataset"]["name"]: r for r in records["shard"]}
    assert set(shard_by_dataset) == {"mall_warm", "night_station"}
    for name, rec in shard_by_dataset.items():
        [raw] = rec["inputs"]
        assert raw["uri"] == str(result.artifacts["synth"][0] / name)  # read from inside the synth artifact
    # what tasks hand each other (KFP output metadata, manifests) names the store, never a pod's path
    handed = [json.loads(p.read_text()) for p in result.run_dir.rglob("executor_output.json")]
    handed += [json.loads(p.read_text()) for p in result.run_dir.rglob("manifest.json")]
    uris = re.findall(r'"uri": "([^"]+)"', json.dumps(handed))
    assert uris and all(u.startswith(str(result.run_dir)) for u in uris), sorted(set(uris))
    if "pretrain" not in LOCAL_RUN_STAGES:
        return

    source_digest = shard_by_dataset["mall_warm"]["artifact"]["digest"]
    target_digest = shard_by_dataset["night_station"]["artifact"]["digest"]
    # lineage names tasks by KFP task: the loop's second seed (display name pretrain-seed1) is the 2nd
    # pretrain task, the SDA encoder and the model on the translations the 3rd and 4th (sda-encoder,
    # pretrain-sda)
    assert sorted(set(records) - {*expected, "camera"}) == [
        "mmt",
        "pretrain-2",
        "pretrain-3",
        "pretrain-4",
        "sda-train",
        "sda-translate",
    ]
    [generator], [translated] = records["sda-train"], records["sda-translate"]
    assert (generator["artifact"]["kind"], translated["artifact"]["kind"]) == ("generator", "shards")
    [on_translations] = records["pretrain-4"]
    assert on_translations["params"]["name"] == "osnet_x0_25-sda"
    second_seeds = records["pretrain-2"]
    assert sorted(r["params"]["seed"] for r in second_seeds) == [1, 1]
    raw_models = records["pretrain"] + records["pretrain-3"]
    for rec in raw_models:  # the two backbones and the SDA encoder: BN adapted on the target
        assert [i["digest"] for i in rec["inputs"]] == [source_digest, target_digest]
    # the SDA chain: encoder (a raw pretrain) -> generator -> translated sources -> pretrain on them
    gen_inputs = {i["name"]: i["digest"] for i in generator["inputs"]}
    assert gen_inputs["source0"] == source_digest and gen_inputs["target"] == target_digest
    assert gen_inputs["source_model"] == gen_inputs["target_model"]
    # the encoder trains exactly what the loop's osnet_x0_25 task trains (same params, data and seed),
    # so the two models are bit-identical: tell them apart by task, not by digest
    [encoder] = records["pretrain-3"]
    assert encoder["artifact"]["digest"] == gen_inputs["source_model"]
    assert encoder["params"]["model"]["backbone"] == "osnet_x0_25"
    loop_models = records["pretrain"]
    assert {r["params"]["model"]["backbone"] for r in loop_models} == {"osnet_x0_25", "mobilenetv2_x0_5"}
    assert [i["digest"] for i in translated["inputs"]] == [generator["artifact"]["digest"], source_digest]
    assert [i["digest"] for i in on_translations["inputs"]] == [
        translated["artifact"]["digest"],
        target_digest,
    ]
    # MMT+ per backbone: the loop's seed-0 and seed-1 models of that backbone, the sources, the target
    assert len(records["mmt"]) == 2
    for adapted in records["mmt"]:
        backbone = adapted["params"]["name"].removesuffix("-mmt")
        [net1] = [r for r in loop_models if r["params"]["model"]["backbone"] == backbone]
        [net2] = [r for r in second_seeds if r["params"]["model"]["backbone"] == backbone]
        assert [i["digest"] for i in adapted["inputs"]] == [
            net1["artifact"]["digest"],
            net2["artifact"]["digest"],
            source_digest,
            target_digest,
        ]
    if "evaluate" not in LOCAL_RUN_STAGES:
        return

    [evaluation] = records["evaluate"]
    input_digests = {i["digest"] for i in evaluation["inputs"]}
    ensemble = [*loop_models, on_translations, *records["metabin"], *records["mmt"]]
    assert {r["artifact"]["digest"] for r in ensemble} <= input_digests
    input_uris = {i["uri"] for i in evaluation["inputs"]}
    assert str(result.artifacts["pretrain-3"][0]) not in input_uris  # the SDA encoder is not in the ensemble
    assert {str(p) for p in result.artifacts["pretrain"]} <= input_uris
    [metabin] = records["metabin"]
    assert [i["digest"] for i in metabin["inputs"]] == [source_digest, target_digest]  # target: eval only
    assert shard_by_dataset["night_station"]["artifact"]["digest"] in input_digests
    assert source_digest not in input_digests  # sources are not evaluation sets
    camera_inputs = [i for i in evaluation["inputs"] if i["name"] == "camera"]
    assert len(camera_inputs) == 1, "evaluate.camera.enabled wires the camera model into the evaluation"
    assert result.report is not None and result.report.is_file()
    scores = json.loads(result.metrics.read_text())
    assert set(scores["summary"]["night_station"]) == {
        "osnet_x0_25",
        "mobilenetv2_x0_5",
        "osnet_x0_25-metabin",
        "osnet_x0_25-sda",
        "osnet_x0_25-mmt",
        "mobilenetv2_x0_5-mmt",
        "ensemble",
    }

    from reidflow.store.ancestry import verify

    checked = verify(str(result.artifacts["evaluate"][0]))
    assert len(checked) >= 1 + 2 + 1  # evaluation, both models, the eval shards (and their raw input)

    task_dir = result.artifacts["evaluate"][0].parent
    outputs = json.loads((task_dir / "executor_output.json").read_text())["artifacts"]
    kfp_metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert kfp_metrics["night_station.ensemble.mAP"] == pytest.approx(
        scores["summary"]["night_station"]["ensemble"]["mAP"]
    )
    assert "data:image/png;base64," in (task_dir / "report_html").read_text()
    assert (task_dir / "report_md").read_text() == (result.artifacts["evaluate"][0] / "report.md").read_text()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_local_run_with_s3_artifact_root(workdir: Path, s3_env: dict[str, str]) -> None:
    from components.runtime import POINTER_FILE, read_record

    root = f"s3://{s3_env['BUCKET']}/kfp"
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params(artifact_root=root)))
    result = run_local(
        workdir / "params.yaml", workdir / "kfp-root", stages=("synth", "shard"), isolated=True
    )

    assert result.artifacts == {}, "with an S3 artifact root the local KFP artifacts are pointers only"
    pointers = sorted(result.run_dir.rglob(POINTER_FILE))
    assert len(pointers) == 3  # synth + one shard per dataset
    uris = [json.loads(p.read_text())["uri"] for p in pointers]
    assert all(u.startswith(root + "/") for u in uris)
    shard_uris = sorted(u for u in uris if "/shard/" in u)
    assert [u.rsplit("/", 1)[-1] for u in shard_uris] == ["mall_warm", "night_station"]
    for uri in uris:
        rec = read_record(uri)
        assert rec["runtime"]["orchestrator"] == "kfp" and rec["artifact"]["uri"] == uri
    [manifest] = list(result.run_dir.rglob("manifest.json"))
    entries = json.loads(manifest.read_text())["shards"]
    assert sorted(e["uri"] for e in entries) == shard_uris
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in json.dumps([read_record(u) for u in uris])
