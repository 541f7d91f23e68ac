"""Compile the KFP pipeline from a params file and check the YAML a cluster would run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from components import runtime
from components.image import DEFAULT_IMAGE, resolve_image
from components.pytorchjob import PARAMS_PATH, job_state, pytorchjob_manifest
from components.settings import KfpConfig
from pipelines.reid_pipeline import build_pipeline, plan_pipeline
from pipelines.runner import compile_pipeline, load_plan, submit

from reidflow.errors import ArtifactError, ConfigError

DIGEST = "sha256:" + "ab" * 32
TRAINING = {"exec-pretrain"}
STAGES = {"exec-synth", "exec-shard", "exec-collect-shards", "exec-pretrain", "exec-evaluate"}


def tiny_params(**kfp: Any) -> dict[str, Any]:
    return {
        "synth": {"seed": 0, "domains": [{"preset": "mall_warm"}, {"preset": "night_station"}]},
        "datasets": {
            "mall_warm": {"reader": "market1501", "root": "data/synth/mall_warm", "role": "source"},
            "night_station": {"reader": "market1501", "root": "data/synth/night_station", "role": "eval"},
        },
        "pretrain": {"model": {"backbone": "osnet_x0_25"}},
        "kfp": {
            "backbones": ["osnet_x0_25", "mobilenetv2_x0_5"],
            "gpus": 2,
            "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute"},
            ],
            **kfp,
        },
    }


def compile_params(tmp_path: Path, params: dict[str, Any], *overrides: str) -> tuple[dict, dict]:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = compile_pipeline(params_file, tmp_path / "pipeline.yaml", list(overrides))
    docs = list(yaml.safe_load_all(out.read_text()))  # also proves the package is valid YAML
    assert len(docs) == 2, "expected the pipeline spec and the Kubernetes platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture()
def compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    return compile_params(tmp_path, tiny_params(image=f"registry.example.com/reidflow@{DIGEST}"))


def all_tasks(spec: dict) -> dict[str, dict]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update((comp.get("dag") or {}).get("tasks") or {})
    return tasks


def test_every_stage_is_a_task_in_the_pinned_image(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == STAGES
    assert {t["taskInfo"]["name"] for t in all_tasks(spec).values()} >= {
        "synth",
        "shard",
        "collect-shards",
        "pretrain",
        "evaluate",
    }
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == f"registry.example.com/reidflow@{DIGEST}", name
        assert "pip install" not in " ".join(container["command"]), f"{name}: install_kfp_package must be off"
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env["REIDFLOW_IMAGE_DIGEST"] == f"registry.example.com/reidflow@{DIGEST}"


def test_training_tasks_request_gpus_and_others_do_not(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    for name, ex in spec["deploymentSpec"]["executors"].items():
        res = ex["container"]["resources"]
        if name in TRAINING:
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert res["accelerator"]["resourceCount"] == "2"
            assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == ("4", "8")
            assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == ("16Gi", "32Gi")
        else:
            assert "accelerator" not in res, name
            assert (res["resourceCpuRequest"], res["resourceMemoryLimit"]) == ("1", "4Gi")


def test_secret_env_retry_and_caching_on_every_task(compiled: tuple[dict, dict]) -> None:
    spec, platform = compiled
    for name in STAGES:
        required, optional = platform[name]["secretAsEnv"]
        assert required["secretName"] == optional["secretName"] == "reidflow-s3"
        assert {k["envVar"] for k in required["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert required.get("optional", False) is False
        # AWS users set no endpoint: a missing optional key must not fail the pod
        assert {k["envVar"] for k in optional["keyToEnv"]} == {"AWS_ENDPOINT_URL", "AWS_REGION"}
        assert optional["optional"] is True
        timeout = int(platform[name]["activeDeadlineSeconds"])
        assert timeout == (3 * 24 * 3600 if name in TRAINING else 6 * 3600), name
    for task_name, task in all_tasks(spec).items():
        if "componentRef" in task and task["componentRef"]["name"].startswith("comp-for-loop"):
            continue
        assert task["retryPolicy"]["maxRetryCount"] == 2, task_name
        assert task["retryPolicy"]["backoffDuration"] == "60s"
        assert task["retryPolicy"]["backoffFactor"] == 2.0
        assert task["cachingOptions"]["enableCache"] is True


def test_training_placement_and_shared_memory(compiled: tuple[dict, dict]) -> None:
    _, platform = compiled
    pretrain = platform["exec-pretrain"]
    assert pretrain["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {(t["key"], t["operator"], t["effect"]) for t in pretrain["tolerations"]} == {
        ("nvidia.com/gpu", "Exists", "NoSchedule"),
        ("spot", "Equal", "NoExecute"),
    }
    for name in ("exec-pretrain", "exec-evaluate"):
        [shm] = platform[name]["emptyDirMounts"]
        assert (shm["mountPath"], shm["medium"], shm["sizeLimit"]) == ("/dev/shm", "Memory", "8Gi")
    assert "nodeSelector" not in platform["exec-synth"] and "emptyDirMounts" not in platform["exec-synth"]


def test_fan_out_fan_in_and_defaults_from_params(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    loops = {
        t["taskInfo"]["name"]: t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t
    }
    assert set(loops) == {"datasets", "backbones"}
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["backbones"]["defaultValue"] == ["osnet_x0_25", "mobilenetv2_x0_5"]
    assert inputs["datasets"]["defaultValue"] == ["mall_warm", "night_station"]
    assert inputs["artifact_root"]["defaultValue"] == ""
    assert "params_yaml" not in inputs, "no task receives the whole params"
    pretrain_params = runtime.load_params_text(inputs["pretrain_params"]["defaultValue"])
    assert pretrain_params == {"pretrain": {"model": {"backbone": "osnet_x0_25"}}}
    shard_params = runtime.load_params_text(inputs["shard_params"]["defaultValue"])
    assert set(shard_params) == {"datasets"}  # + "shard" when params.yaml has one
    evaluate = spec["root"]["dag"]["tasks"]["evaluate"]
    assert evaluate["inputs"]["artifacts"]["models"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    assert (
        spec["components"]["comp-evaluate"]["inputDefinitions"]["artifacts"]["models"]["isArtifactList"]
        is True
    )
    out_types = {
        k: v["artifactType"]["schemaTitle"]
        for k, v in spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"].items()
    }
    assert out_types == {
        "evaluation": "system.Artifact",
        "metrics": "system.Metrics",
        "report_html": "system.HTML",
        "report_md": "system.Markdown",
    }
    assert (
        spec["components"]["comp-pretrain"]["outputDefinitions"]["artifacts"]["model"]["artifactType"][
            "schemaTitle"
        ]
        == "system.Model"
    )


def test_content_digests_reach_the_loop_tasks(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    loop1 = spec["root"]["dag"]["tasks"]["for-loop-1"]["inputs"]["parameters"]
    assert loop1["pipelinechannel--synth-digest"]["taskOutputParameter"] == {
        "outputParameterKey": "digest",
        "producerTask": "synth",
    }
    shard = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["shard"]["inputs"]["parameters"]
    assert shard["raw_digest"]["componentInputParameter"] == "pipelinechannel--synth-digest"
    pretrain = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]["pretrain"]["inputs"]["parameters"]
    assert pretrain["shards_digest"]["componentInputParameter"] == "pipelinechannel--collect-shards-digest"
    evaluate = spec["root"]["dag"]["tasks"]["evaluate"]["inputs"]["parameters"]
    assert (
        evaluate["model_digests"]["taskOutputParameter"]["outputParameterKey"]
        == "pipelinechannel--pretrain-digest"
    )


def test_local_variant_does_not_wire_loop_digests() -> None:
    comp = build_pipeline(plan_pipeline(tiny_params()), wire_loop_digests=False)
    tasks = comp.pipeline_spec.components["comp-for-loop-1"].dag.tasks
    assert tasks["shard"].inputs.parameters["raw_digest"].runtime_value.constant.string_value == ""


def test_stage_prefix_and_multinode_variants(tmp_path: Path) -> None:
    short = build_pipeline(plan_pipeline(tiny_params()), stages=["synth", "shard"]).pipeline_spec
    assert set(short.deployment_spec["executors"]) == {"exec-synth", "exec-shard", "exec-collect-shards"}
    with pytest.raises(ConfigError, match="prefix"):
        build_pipeline(plan_pipeline(tiny_params()), stages=["synth", "pretrain"])
    spec, platform = compile_params(
        tmp_path, tiny_params(distributed={"nodes": 3}, artifact_root="s3://bkt/runs")
    )
    executors = spec["deploymentSpec"]["executors"]
    assert "exec-pretrain-multinode" in executors and "exec-pretrain" not in executors
    assert "accelerator" not in executors["exec-pretrain-multinode"]["container"]["resources"]
    assert "secretAsEnv" in platform["exec-pretrain-multinode"]


def test_image_comes_from_env_then_params_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    assert resolve_image({}) == DEFAULT_IMAGE
    assert resolve_image({"kfp": {"image": "quay.io/x/reid:1.2"}}) == "quay.io/x/reid:1.2"
    monkeypatch.setenv("REIDFLOW_IMAGE", f"ghcr.io/me/reid@{DIGEST}")
    assert resolve_image({"kfp": {"image": "quay.io/x/reid:1.2"}}) == f"ghcr.io/me/reid@{DIGEST}"
    spec, _ = compile_params(tmp_path, tiny_params(image="quay.io/x/reid:1.2"))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        f"ghcr.io/me/reid@{DIGEST}"
    }
    monkeypatch.setenv("REIDFLOW_IMAGE", "ghcr.io/me/reid")  # neither tag nor digest
    with pytest.raises(ConfigError, match="REIDFLOW_IMAGE.*neither a tag nor a digest"):
        resolve_image({})
    monkeypatch.delenv("REIDFLOW_IMAGE")
    with pytest.raises(ConfigError, match="kfp.image"):
        resolve_image({"kfp": {"image": "Not An Image"}})


@pytest.mark.parametrize(
    ("kfp", "match"),
    [
        ({"artifact_root": "http://bucket/x"}, "kfp.artifact_root"),
        ({"datasets": ["nope"]}, "kfp.datasets names \\['nope'\\]"),
        ({"gpus": -1}, "kfp.gpus"),
        ({"shm": "1Gi"}, "kfp.shm"),
        ({"s3_secret": {"name": "s", "keys": {"a": "AWS_ACCESS_KEY_ID"}}}, "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_kfp_section_is_named(kfp: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plan_pipeline(tiny_params(**kfp))


def test_backbones_default_to_the_pretrain_backbone(tmp_path: Path) -> None:
    params = tiny_params()
    del params["kfp"]["backbones"]
    assert plan_pipeline(params).backbones == ["osnet_x0_25"]
    assert plan_pipeline({**params, "backbones": ["resnet50", "osnet_x1_0"]}).backbones == [
        "resnet50",
        "osnet_x1_0",
    ]
    with pytest.raises(ConfigError, match="backbones: expected a list"):
        plan_pipeline({**params, "backbones": "resnet50"})
    del params["pretrain"]
    with pytest.raises(ConfigError, match="pretrain.model.backbone"):
        plan_pipeline(params)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tiny_params()))
    assert load_plan(tmp_path / "p.yaml", ["kfp.backbones=[resnet50]"]).backbones == ["resnet50"]


def test_pytorchjob_manifest_for_multinode_pretrain() -> None:
    cfg = KfpConfig.model_validate(tiny_params(distributed={"nodes": 3})["kfp"])
    args = runtime.stage_cli_args(
        "pretrain",
        PARAMS_PATH,
        [("source", "s3://b/s1"), ("target", "s3://b/t")],
        "s3://b/out/pretrain/osnet",
        "pretrain",
    )
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u-1", "blockOwnerDeletion": False}
    job = pytorchjob_manifest(
        name="reidflow-Run_1-OSNet.x",
        namespace="ml",
        image=f"r.io/reid@{DIGEST}",
        cli_args=args,
        params_yaml="pretrain: {}\n",
        nodes=3,
        cfg=cfg,
        env={"REIDFLOW_RUN_ID": "run-1"},
        owner=owner,
    )
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["metadata"] == {
        "name": "reidflow-run-1-osnet-x",
        "namespace": "ml",
        "labels": {"app.kubernetes.io/part-of": "reidflow"},
        "ownerReferences": [owner],  # deleted with the KFP task's pod
    }
    # WORLD_SIZE = pods x processes only when the operator knows the processes per pod
    assert job["spec"]["nprocPerNode"] == "2"
    assert job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 24 * 3600
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    for replica in replicas.values():
        assert replica["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    pod = replicas["Worker"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == "pytorch" and container["image"] == f"r.io/reid@{DIGEST}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    shell = container["command"][2]
    assert "torchrun" in shell and "--nproc_per_node=2" in shell
    assert '--nnodes="${PET_NNODES:-$WORLD_SIZE}"' in shell  # never WORLD_SIZE alone: it counts processes
    assert '--node_rank="${PET_NODE_RANK:-$RANK}"' in shell
    assert "-m reidflow.cli pretrain --params /tmp/reidflow-params.yaml --input source=s3://b/s1" in shell
    assert "--input target=s3://b/t --output s3://b/out/pretrain/osnet --orchestrator kfp" in shell
    env = {e["name"]: e for e in container["env"]}
    assert env["REIDFLOW_PARAMS_YAML"]["value"] == "pretrain: {}\n"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "reidflow-s3",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute"} in pod["tolerations"]
    json.dumps(job)  # serializable as sent to the API server
    single = pytorchjob_manifest(
        name="x", namespace="ml", image="r.io/reid:1", cli_args=args, params_yaml="", nodes=1, cfg=cfg
    )
    assert set(single["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    with pytest.raises(ConfigError, match="--params"):
        pytorchjob_manifest(
            name="x",
            namespace="ml",
            image="r.io/reid:1",
            cli_args=["pretrain", "--params", "p.yaml"],
            params_yaml="",
            nodes=2,
            cfg=cfg,
        )


def test_job_state_reads_the_final_condition() -> None:
    assert job_state({"status": {"conditions": [{"type": "Running", "status": "True"}]}}) is None
    assert (
        job_state(
            {
                "status": {
                    "conditions": [
                        {"type": "Running", "status": "False"},
                        {"type": "Succeeded", "status": "True"},
                    ]
                }
            }
        )
        == "Succeeded"
    )
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "Failed"


# ---- what the components do around the stage call (runtime helpers) ----


class FakeArtifact:
    """A KFP artifact as a component sees it: ``uri`` in the object store, ``path`` in the pod."""

    def __init__(self, path: Path, metadata: dict | None = None, uri: str | None = None) -> None:
        self.path = str(path)
        self.uri = uri if uri is not None else str(path)
        self.metadata = dict(metadata or {})


def test_output_uri_separates_runs_tasks_and_iterations(tmp_path: Path) -> None:
    art = FakeArtifact(tmp_path / "out")
    assert runtime.output_uri(art, "", "123", "shard", "mall") == str(tmp_path / "out")
    assert (
        runtime.output_uri(art, "s3://bkt/root/", "run 9", "shard", "mall_warm")
        == "s3://bkt/root/run-9/shard/mall_warm"
    )
    with pytest.raises(ConfigError, match="artifact_root"):
        runtime.output_uri(art, "/local/root", "1", "t")
    # a placeholder that stayed literal (a component default on a cluster) must not become a key
    with pytest.raises(ConfigError, match="task argument"):
        runtime.output_uri(art, "s3://bkt/root", "{{$.pipeline_job_uuid}}", "shard")
    with pytest.raises(ConfigError, match="task argument"):
        runtime.output_uri(art, "", "1", "{{$.pipeline_task_name}}")


def test_params_text_overrides_and_errors() -> None:
    params = runtime.load_params_text(
        '{"pretrain": {"model": {"backbone": "a"}}}', ["pretrain.model.backbone=b"]
    )
    assert params["pretrain"]["model"]["backbone"] == "b"
    with pytest.raises(ConfigError, match="params_yaml.*not valid YAML"):
        runtime.load_params_text("a: [1,")
    with pytest.raises(ConfigError, match="expected a mapping"):
        runtime.load_params_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        runtime.load_params_text("a: 1", ["no-equals-sign"])


def test_dataset_roots_map_into_the_synth_artifact(tmp_path: Path) -> None:
    params = tiny_params()
    params["datasets"]["market"] = {"reader": "market1501", "root": "/mnt/data/market1501"}
    assert runtime.dataset_subdir(params, "mall_warm", "data/synth") == "mall_warm"
    assert runtime.dataset_subdir(params, "market", "data/synth") is None
    (tmp_path / "mall_warm").mkdir()
    assert runtime.shard_raw_uri(params, "mall_warm", str(tmp_path), "data/synth") == str(
        tmp_path / "mall_warm"
    )
    with pytest.raises(ArtifactError, match="night_station.*it has: \\['mall_warm'\\]"):
        runtime.shard_raw_uri(params, "night_station", str(tmp_path), "data/synth")
    with pytest.raises(ConfigError, match="datasets.ghost.root"):
        runtime.dataset_subdir(params, "ghost", "data/synth")


def test_manifest_roles_select_training_and_evaluation_inputs(tmp_path: Path) -> None:
    entries = [
        {"dataset": "a", "role": "source", "uri": "s3://b/a"},
        {"dataset": "b", "role": "source", "uri": "/b"},
        {"dataset": "t", "role": "target", "uri": "/t"},
        {"dataset": "e", "role": "eval", "uri": "/e"},
    ]
    runtime.write_manifest(str(tmp_path / "m"), entries)
    read = runtime.read_manifest(FakeArtifact(tmp_path / "m"))
    assert runtime.training_inputs(read) == (["s3://b/a", "/b"], "/t")
    assert runtime.evaluation_sets(read) == ["/t", "/e"]
    with pytest.raises(ConfigError, match="role 'source'"):
        runtime.training_inputs([e for e in read if e["role"] != "source"])
    with pytest.raises(ConfigError, match="role 'eval' or 'target'"):
        runtime.evaluation_sets([e for e in read if e["role"] == "source"])
    with pytest.raises(ArtifactError, match="manifest missing"):
        runtime.read_manifest(FakeArtifact(tmp_path / "nothing"))


def test_publish_records_uri_digest_and_pointer(tmp_path: Path) -> None:
    from reidflow.store.artifacts import write_artifact

    with write_artifact(
        tmp_path / "art",
        kind="model",
        stage="pretrain",
        params={},
        params_digest="sha256:0",
        seed=0,
        inputs=[],
    ) as w:
        (w.path / "weights.bin").write_bytes(b"123")
    local = FakeArtifact(tmp_path / "art")
    digest = runtime.publish(local, str(tmp_path / "art"), backbone="osnet")
    assert digest.startswith("sha256:") and local.metadata["digest"] == digest
    assert local.metadata["kind"] == "model" and local.metadata["backbone"] == "osnet"
    assert runtime.input_uri(local) == str(tmp_path / "art")
    elsewhere = FakeArtifact(tmp_path / "kfp-out")  # the stage wrote to another location (S3 in a cluster)
    runtime.publish(elsewhere, str(tmp_path / "art"))
    pointer = json.loads((tmp_path / "kfp-out" / runtime.POINTER_FILE).read_text())
    assert pointer == {"uri": str(tmp_path / "art"), "digest": digest}
    with pytest.raises(ArtifactError, match="no lineage.json"):
        runtime.publish(FakeArtifact(tmp_path / "x"), str(tmp_path / "kfp-out"))


def test_metric_flattening() -> None:
    flat = runtime.numeric_leaves({"t": {"m": {"mAP": 0.5, "rank1": 1, "ok": True, "name": "x"}}})
    assert flat == {"t.m.mAP": 0.5, "t.m.rank1": 1.0}
    assert len(runtime.numeric_leaves({str(i): i for i in range(500)}, limit=10)) == 10


def test_submit_rejects_bad_input_before_any_network_call(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pipeline package not found"):
        submit(tmp_path / "missing.yaml", "http://localhost:1")
    (tmp_path / "p.yaml").write_text("x: 1\n")
    with pytest.raises(ConfigError, match="--host"):
        submit(tmp_path / "p.yaml", "kubeflow.example.com")


def test_cli_compile_and_run_flags(tmp_path: Path) -> None:
    from pipelines.cli import pipeline_app
    from typer.testing import CliRunner

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    out = tmp_path / "pkg.yaml"
    result = CliRunner().invoke(
        pipeline_app,
        ["compile", "--params", str(tmp_path / "params.yaml"), "--output", str(out), "--set", "kfp.gpus=4"],
    )
    assert result.exit_code == 0, result.output
    spec = next(yaml.safe_load_all(out.read_text()))
    assert (
        spec["deploymentSpec"]["executors"]["exec-pretrain"]["container"]["resources"]["accelerator"][
            "resourceCount"
        ]
        == "4"
    )
    result = CliRunner().invoke(pipeline_app, ["run", "--params", str(tmp_path / "params.yaml")])
    assert isinstance(result.exception, ConfigError) and "--local" in str(result.exception)


def test_camera_model_task_when_camera_correction_is_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    params = tiny_params(image=f"registry.example.com/reidflow@{DIGEST}")
    params["datasets"]["night_station"]["role"] = "target"
    params["evaluate"] = {"camera": {"enabled": True}}
    spec, _ = compile_params(tmp_path, params)
    tasks = all_tasks(spec)
    assert "camera" in tasks
    evaluate_inputs = tasks["evaluate"]["inputs"]["artifacts"]
    assert evaluate_inputs["camera"]["taskOutputArtifact"]["producerTask"] == "camera"
    assert "nvidia.com/gpu" in json.dumps(spec["deploymentSpec"]["executors"]["exec-camera"])
    without, _ = compile_params(tmp_path, tiny_params(image=f"registry.example.com/reidflow@{DIGEST}"))
    assert "camera" not in all_tasks(without)


def test_metabin_task_when_params_have_a_metabin_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    params = tiny_params(image=f"registry.example.com/reidflow@{DIGEST}")
    params["metabin"] = {"model": {"backbone": "osnet_x0_25", "norm": "metabin"}}
    spec, platform = compile_params(tmp_path, params)
    tasks = all_tasks(spec)
    assert "metabin" in tasks
    assert tasks["metabin"]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]["producerTask"] == (
        "collect-shards"
    )
    evaluate_inputs = tasks["evaluate"]["inputs"]["artifacts"]
    assert evaluate_inputs["metabin"]["taskOutputArtifact"]["producerTask"] == "metabin"
    executor = spec["deploymentSpec"]["executors"]["exec-metabin"]
    assert executor["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    assert "nvidia-l4" in json.dumps(platform["exec-metabin"]), "GPU node pool selector"
    assert "metabin" not in all_tasks(compile_params(tmp_path, tiny_params())[0])


def test_sda_chain_when_params_have_an_sda_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """encoder pretrain -> sda train -> sda translate -> pretrain on the translations -> the ensemble."""
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    params = tiny_params(image=f"registry.example.com/reidflow@{DIGEST}")
    params["datasets"]["night_station"]["role"] = "target"
    params["sda"] = {"transforms": {"height": 64, "width": 32}}
    spec, platform = compile_params(tmp_path, params)
    tasks = all_tasks(spec)
    by_name = {t["taskInfo"]["name"]: key for key, t in tasks.items()}
    chain = [by_name[n] for n in ("sda-encoder", "sda-train", "sda-translate", "pretrain-sda")]

    def producer(task: str, artifact: str) -> str:
        return tasks[task]["inputs"]["artifacts"][artifact]["taskOutputArtifact"]["producerTask"]

    executors = spec["deploymentSpec"]["executors"]

    def executor(task: str) -> str:
        return tasks[task]["componentRef"]["name"].replace("comp-", "exec-", 1)

    for task in (chain[0], chain[3]):  # both run the pretrain component
        assert executors[executor(task)]["container"] == executors["exec-pretrain"]["container"]
    assert producer(chain[0], "shards") == "collect-shards"
    assert producer(chain[1], "encoder") == chain[0] and producer(chain[1], "shards") == "collect-shards"
    assert producer(chain[2], "generator") == chain[1]
    assert producer(chain[3], "shards") == chain[2]  # the translate task's manifest: translations + target
    assert tasks[chain[3]]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]["outputArtifactKey"] == (
        "manifest"
    )
    assert producer("evaluate", "sda") == chain[3]
    assert producer("evaluate", "models") == "for-loop-2"  # the backbone loop still fans in beside it
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["sda_pretrain_overrides"]["defaultValue"] == ["pretrain.name=osnet_x0_25-sda"]
    for key in chain:
        res = executors[executor(key)]["container"]["resources"]
        assert res["accelerator"]["resourceCount"] == "2", key
        assert "nvidia-l4" in json.dumps(platform[executor(key)]), key
        assert platform[executor(key)]["secretAsEnv"][0]["secretName"] == "reidflow-s3"
    assert "def sda_train(" in " ".join(executors["exec-sda-train"]["container"]["command"])
    without = all_tasks(compile_params(tmp_path, tiny_params())[0])
    assert not {t["taskInfo"]["name"] for t in without.values()} & {"sda-train", "sda-translate"}


def test_torchrun_arguments_of_a_stage_with_modes() -> None:
    args = runtime.stage_cli_args(
        "sda", "/p.yaml", [("source", "s3://b/s"), ("target", "s3://b/t")], "s3://b/g", "sda-train", "train"
    )
    assert args[:4] == ["sda", "train", "--params", "/p.yaml"]
    assert args[4:8] == ["--input", "source=s3://b/s", "--input", "target=s3://b/t"]
    assert runtime.stage_cli_args("pretrain", "/p.yaml", [], "o", "t")[:2] == ["pretrain", "--params"]


def test_mmt_per_backbone_when_params_have_an_mmt_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pretrain (seed 0) and pretrain-seed1 of each backbone -> mmt in the same loop -> the ensemble."""
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    params = tiny_params(image=f"registry.example.com/reidflow@{DIGEST}")
    params["datasets"]["night_station"]["role"] = "target"
    params["mmt"] = {"transforms": {"height": 64, "width": 32}}
    spec, platform = compile_params(tmp_path, params)
    tasks = all_tasks(spec)
    by_name = {t["taskInfo"]["name"]: key for key, t in tasks.items()}
    mmt, second = by_name["mmt"], by_name["pretrain-seed1"]
    artifacts = tasks[mmt]["inputs"]["artifacts"]
    assert artifacts["model1"]["taskOutputArtifact"]["producerTask"] == "pretrain"
    assert artifacts["model2"]["taskOutputArtifact"]["producerTask"] == second
    assert "collect-shards" in json.dumps(artifacts["shards"])  # the loop's input: collect's manifest
    loop = next(c for c in spec["components"].values() if mmt in ((c.get("dag") or {}).get("tasks") or {}))
    assert "pretrain" in loop["dag"]["tasks"], "mmt runs inside the backbone loop, beside pretrain"
    parameters = tasks[second]["inputs"]["parameters"]
    assert parameters["overrides"]["componentInputParameter"] == "pipelinechannel--mmt_pretrain_overrides"
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["mmt_pretrain_overrides"]["defaultValue"] == ["pretrain.seed=1", "pretrain.engine.seed=1"]
    evaluate_inputs = tasks["evaluate"]["inputs"]["artifacts"]
    assert "mmt_models" in evaluate_inputs and "models" in evaluate_inputs
    res = spec["deploymentSpec"]["executors"]["exec-mmt"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "2"
    assert "nvidia-l4" in json.dumps(platform["exec-mmt"])
    assert "mmt" not in by_name or "mmt" not in {
        t["taskInfo"]["name"] for t in all_tasks(compile_params(tmp_path, tiny_params())[0]).values()
    }
    assert runtime.stage_cli_args("mmt", "/p.yaml", [("model", "a"), ("model", "b")], "o", "t")[:4] == [
        "mmt", "--params", "/p.yaml", "--input",
    ]  # fmt: skip
