"""The compiled pipeline YAML against the rules a Kubeflow Pipelines backend enforces (no cluster).

``kfp.local`` forgives what a backend does not: placeholders in component defaults (left literal by
the backend), paths of another task's pod, artifacts nobody produced, secret keys that are missing,
and cache keys that change with every edit. Each test encodes one rule over the whole package, with
every optional task (camera, MetaBIN, SDA, MMT+) switched on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from components import runtime
from pipelines.reid_pipeline import TASK_SECTIONS
from pipelines.runner import compile_pipeline

DIGEST = "sha256:" + "cd" * 32
PLACEHOLDER = re.compile(r"\{\{\$\.pipeline_[a-z_]+\}\}")
TRAINING_COMPONENTS = {"pretrain", "camera", "metabin", "mmt", "sda-train", "sda-translate"}
# which TASK_SECTIONS entry each component's params come from
PARAMS_KEY = {
    "synth": "synth",
    "shard": "shard",
    "pretrain": "pretrain",
    "pretrain-multinode": "pretrain",
    "camera": "camera",
    "metabin": "metabin",
    "sda-train": "sda",
    "sda-translate": "sda",
    "mmt": "mmt",
    "evaluate": "evaluate",
}


def full_params(**kfp: Any) -> dict[str, Any]:
    """Every section the pipeline knows, so every optional task is compiled."""
    return {
        "synth": {"seed": 0, "domains": [{"preset": "mall_warm"}, {"preset": "night_station"}]},
        "shard": {"shard_max_mb": 64},
        "datasets": {
            "mall_warm": {"reader": "market1501", "root": "data/synth/mall_warm", "role": "source"},
            "night_station": {"reader": "market1501", "root": "data/synth/night_station", "role": "target"},
        },
        "backbones": ["osnet_x0_25", "mobilenetv2_x0_5"],
        "pretrain": {"model": {"backbone": "osnet_x0_25"}, "engine": {"epochs": 2}},
        "camera": {"labels": "camera", "model": {"backbone": "osnet_x0_25"}},
        "metabin": {"model": {"backbone": "osnet_x0_25", "norm": "metabin"}},
        "sda": {"transforms": {"height": 64, "width": 32}},
        "mmt": {"transforms": {"height": 64, "width": 32}},
        "evaluate": {"rerank": {"enabled": True, "k1": 20}, "camera": {"enabled": True}},
        "kfp": {
            "image": f"registry.example.com/reidflow@{DIGEST}",
            "gpus": 2,
            "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            **kfp,
        },
    }


def compile_spec(tmp_path: Path, params: dict[str, Any], name: str = "p") -> tuple[dict, dict]:
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(params))
    out = compile_pipeline(tmp_path / f"{name}.yaml", tmp_path / f"{name}-pipeline.yaml")
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    import os

    os.environ.pop("REIDFLOW_IMAGE", None)
    return compile_spec(tmp_path_factory.mktemp("conformance"), full_params())


# ---- walking the DAG: every leaf task with its inputs resolved to root parameters ----


def resolve(ref: dict[str, Any], scope: dict[str, Any]) -> Any:
    """Where a task input comes from: ('param', name, default) | ('const', value) | ('task', ...)."""
    if "componentInputParameter" in ref:
        return scope[ref["componentInputParameter"]]
    if "runtimeValue" in ref:
        return ("const", ref["runtimeValue"]["constant"])
    if "taskOutputParameter" in ref:
        out = ref["taskOutputParameter"]
        return ("task", out["producerTask"], out["outputParameterKey"])
    if "componentInputArtifact" in ref:
        return scope[ref["componentInputArtifact"]]
    if "taskOutputArtifact" in ref:
        out = ref["taskOutputArtifact"]
        return ("artifact", out["producerTask"], out["outputArtifactKey"])
    raise AssertionError(f"unknown input kind {ref}")


def leaf_tasks(spec: dict) -> list[tuple[str, str, dict, dict]]:
    """(dag component, task key, task spec, resolved inputs) of every container task."""
    root = spec["root"]
    scope = {
        name: ("param", name, d.get("defaultValue"))
        for name, d in root["inputDefinitions"]["parameters"].items()
    }
    found: list[tuple[str, str, dict, dict]] = []

    def visit(dag_name: str, dag: dict, scope: dict) -> None:
        for key, task in dag["tasks"].items():
            comp = spec["components"][task["componentRef"]["name"]]
            inputs = task.get("inputs", {})
            resolved = {
                name: resolve(ref, scope)
                for kind in ("parameters", "artifacts")
                for name, ref in inputs.get(kind, {}).items()
            }
            if "dag" in comp:
                iterator = task.get("parameterIterator")
                if iterator:
                    resolved[iterator["itemInput"]] = (
                        "loop-item",
                        resolved[iterator["items"]["inputParameter"]],
                    )
                visit(task["componentRef"]["name"], comp["dag"], resolved)
            else:
                found.append((dag_name, key, task, resolved))

    visit("root", root["dag"], scope)
    return found


def component_of(spec: dict, task: dict) -> dict:
    return spec["components"][task["componentRef"]["name"]]


def base_name(task: dict) -> str:
    """comp-pretrain-2 -> pretrain (the component a task runs)."""
    return re.sub(r"-\d+$", "", task["componentRef"]["name"].removeprefix("comp-"))


def executor_name(spec: dict, task: dict) -> str:
    return component_of(spec, task)["executorLabel"]


# ---- rule 1: placeholders only as task arguments ----


def test_placeholders_are_task_arguments_never_component_defaults(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    for name, comp in spec["components"].items():
        for param, definition in comp.get("inputDefinitions", {}).get("parameters", {}).items():
            assert not PLACEHOLDER.search(json.dumps(definition.get("defaultValue", ""))), (name, param)
    for param, definition in spec["root"]["inputDefinitions"]["parameters"].items():
        assert not PLACEHOLDER.search(json.dumps(definition.get("defaultValue", ""))), param
    leaves = leaf_tasks(spec)
    named = 0
    for dag, key, task, inputs in leaves:
        definitions = component_of(spec, task)["inputDefinitions"]["parameters"]
        if "task_name" not in definitions:
            continue
        named += 1
        assert not definitions["task_name"].get("isOptional"), (key, "task_name must have no default")
        assert inputs["task_name"] == ("const", "{{$.pipeline_task_name}}"), (dag, key)
    assert named == len(leaves) - 1  # every task but collect-shards (it writes no reidflow artifact)


def test_no_task_input_changes_from_run_to_run(compiled: tuple[dict, dict]) -> None:
    """KFP's cache key covers every input parameter: a per-run value (the run id, a task uuid) as an
    input would make every task of every run a cache miss. The run id reaches the pods as an
    environment variable from their ``pipeline/runid`` label instead."""
    spec, platform = compiled
    per_run = ("{{$.pipeline_job_uuid}}", "{{$.pipeline_task_uuid}}", "{{$.pipeline_job_name}}")
    for _, key, _, inputs in leaf_tasks(spec):
        for name, source in inputs.items():
            assert not any(p in json.dumps(source) for p in per_run), (key, name, source)
    for executor in spec["deploymentSpec"]["executors"]:
        assert {"name": "REIDFLOW_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in platform[
            executor
        ]["fieldPathAsEnv"], executor


def test_task_names_are_unique_so_prefixes_are(compiled: tuple[dict, dict]) -> None:
    """The backend resolves the task-name placeholder to the task's name: S3 prefixes
    (<root>/<run>/<task>[/<item>]) stay distinct only if no two tasks share one."""
    spec, _ = compiled
    names = [task["taskInfo"]["name"] for _, _, task, _ in leaf_tasks(spec)]
    assert len(names) == len(set(names)), sorted(names)
    looped = {
        task["taskInfo"]["name"] for dag, _, task, _ in leaf_tasks(spec) if dag.startswith("comp-for-loop")
    }
    assert looped == {"shard", "pretrain", "pretrain-seed1", "mmt"}  # these add the loop item


# ---- rule 2: every consumed artifact is produced upstream ----


def test_every_consumed_artifact_is_produced_upstream(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled

    def outputs_of(dag: dict, producer: str) -> set[str]:
        comp = spec["components"][dag["tasks"][producer]["componentRef"]["name"]]
        if "dag" in comp:  # a loop: its collected outputs name a subtask's output
            selectors = comp["dag"].get("outputs", {}).get("artifacts", {})
            for name, sel in selectors.items():
                [pick] = sel["artifactSelectors"]
                assert pick["outputArtifactKey"] in outputs_of(comp["dag"], pick["producerSubtask"]), name
            return set(selectors)
        return set(comp.get("outputDefinitions", {}).get("artifacts", {}))

    def check(dag: dict, where: str) -> int:
        consumed = 0
        for key, task in dag["tasks"].items():
            comp = component_of(spec, task)
            declared = comp.get("inputDefinitions", {}).get("artifacts", {})
            given = task.get("inputs", {}).get("artifacts", {})
            missing = [n for n, d in declared.items() if not d.get("isOptional") and n not in given]
            assert not missing, (where, key, missing)
            for name, ref in given.items():
                assert name in declared, (where, key, name)
                if "taskOutputArtifact" in ref:
                    producer = ref["taskOutputArtifact"]["producerTask"]
                    assert producer in dag["tasks"], (where, key, name, producer)
                    assert producer in task.get("dependentTasks", []), (where, key, "runs after", producer)
                    assert ref["taskOutputArtifact"]["outputArtifactKey"] in outputs_of(dag, producer)
                else:
                    assert "componentInputArtifact" in ref, (where, key, name, ref)
                consumed += 1
            if "dag" in comp:
                consumed += check(comp["dag"], task["componentRef"]["name"])
        return consumed

    assert check(spec["root"]["dag"], "root") >= 20
    assert "importer" not in json.dumps(spec), "nothing enters the pipeline by a path or URI of its own"


# ---- rule 3: no task output metadata carrying a pod-local path ----


class PodArtifact:
    """A KFP artifact as the backend hands it to a pod: an object-store URI and its mount path."""

    def __init__(self, uri: str, local_root: Path, metadata: dict | None = None) -> None:
        self.uri = uri
        self.path = str(local_root / uri.split("://", 1)[1])
        self.metadata = dict(metadata or {})


def write_stage_artifact(path: Path, kind: str = "shards") -> None:
    from reidflow.store.artifacts import write_artifact

    with write_artifact(
        path, kind=kind, stage="shard", params={}, params_digest="sha256:0", seed=0, inputs=[]
    ) as w:
        (w.path / "part-0.tar").write_bytes(b"x" * 10)


def local_paths_in(value: Any, pod_root: Path) -> list[str]:
    text = json.dumps(value)
    return [p for p in (str(pod_root), "/minio/", "/s3/", "/gcs/") if p in text]


def test_published_metadata_and_manifests_carry_object_store_uris(tmp_path: Path) -> None:
    from components.collect import component as collect

    pod = tmp_path / "pod"
    shards = []
    for name, role in (("mall_warm", "source"), ("night_station", "target")):
        art = PodArtifact(f"minio://mlpipeline/v2/artifacts/reidflow/run-1/shard/{name}/shards", pod)
        write_stage_artifact(Path(art.path))  # artifact_root '': the stage writes into the KFP artifact
        runtime.publish(art, runtime.output_uri(art, "", "run-1", "shard", name), dataset=name, role=role)
        assert art.metadata["uri"] == art.uri, "downstream reads the object-store URI, not the mount path"
        assert not local_paths_in(art.metadata, pod)
        shards.append(art)
    manifest = PodArtifact("minio://mlpipeline/v2/artifacts/reidflow/run-1/collect-shards/manifest", pod)
    collect.python_func(shards=shards, shard_digests=[], manifest=manifest)
    written = json.loads((Path(manifest.path) / runtime.MANIFEST_FILE).read_text())
    assert not local_paths_in(written, pod)
    # the consumer reads the shards from the object store (KFP's MinIO through the S3 API)
    read = runtime.read_manifest(manifest)
    assert {e["uri"] for e in read} == {
        "s3://mlpipeline/v2/artifacts/reidflow/run-1/shard/mall_warm/shards",
        "s3://mlpipeline/v2/artifacts/reidflow/run-1/shard/night_station/shards",
    }
    # with an S3 artifact root the stage writes there and the KFP artifact only points at it
    elsewhere = PodArtifact("s3://pipeline-root/reidflow/run-1/synth/raw", pod)
    write_stage_artifact(tmp_path / "s3-stand-in")
    runtime.publish(elsewhere, str(tmp_path / "s3-stand-in"))
    assert elsewhere.metadata["uri"] == str(tmp_path / "s3-stand-in")
    assert (Path(elsewhere.path) / runtime.POINTER_FILE).is_file()


def test_other_object_stores_are_refused_with_the_fix() -> None:
    from reidflow.errors import ConfigError

    assert runtime.readable_uri("minio://b/k") == "s3://b/k"
    assert runtime.readable_uri("s3://b/k") == "s3://b/k"
    assert runtime.readable_uri("/local/pipeline-root/x") == "/local/pipeline-root/x"
    with pytest.raises(ConfigError, match="kfp.artifact_root: s3://"):
        runtime.readable_uri("gs://bucket/run/task/model")


# ---- rule 4: secrets' optional flags ----


def test_secret_keys_only_required_when_every_store_needs_them(compiled: tuple[dict, dict]) -> None:
    spec, platform = compiled
    for executor in spec["deploymentSpec"]["executors"]:
        mappings = platform[executor]["secretAsEnv"]
        required = {k["secretKey"] for m in mappings if not m.get("optional") for k in m["keyToEnv"]}
        optional = {k["secretKey"] for m in mappings if m.get("optional") for k in m["keyToEnv"]}
        assert required == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, executor
        assert {"AWS_ENDPOINT_URL", "AWS_REGION"} <= optional, executor
        assert not required & optional


# ---- rule 5: resources (and a timeout) on every training task ----


def test_every_training_task_has_resources_placement_and_timeout(compiled: tuple[dict, dict]) -> None:
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    trained = set()
    for _, key, task, _ in leaf_tasks(spec):
        name = executor_name(spec, task)
        res = executors[name]["container"]["resources"]
        for field in ("cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"):
            assert field in res, (key, field)
        assert int(platform[name]["activeDeadlineSeconds"]) > 0, key
        if base_name(task) not in TRAINING_COMPONENTS:
            continue
        trained.add(base_name(task))
        assert res["accelerator"]["resourceCount"] == "2", key
        assert (res["cpuRequest"], res["memoryLimit"]) == (4.0, 34.359738368), key
        assert platform[name]["nodeSelector"]["labels"], key
        assert platform[name]["tolerations"], key
        [shm] = platform[name]["emptyDirMounts"]
        assert (shm["mountPath"], shm["medium"]) == ("/dev/shm", "Memory"), key
        env = {e["name"]: e["value"] for e in executors[name]["container"].get("env", [])}
        assert float(env["REIDFLOW_CHECKPOINT_SYNC_S"]) > 0, key
    assert trained == TRAINING_COMPONENTS


# ---- rule 6: per-task params only, so the cache keys mean something ----


def resolved_inputs(spec: dict) -> dict[str, dict[str, Any]]:
    """Each task's inputs with root parameters replaced by their default values."""
    out = {}
    for dag, key, task, inputs in leaf_tasks(spec):
        values = {}
        for name, source in inputs.items():
            values[name] = source[2] if source[0] == "param" else source
        out[f"{dag}/{key}"] = values
    return out


def test_each_task_receives_only_the_sections_it_reads(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    checked = set()
    for _, key, task, inputs in leaf_tasks(spec):
        if "params_yaml" not in inputs:
            continue
        component = base_name(task)
        params = runtime.load_params_text(inputs["params_yaml"][2])
        assert set(params) <= set(TASK_SECTIONS[PARAMS_KEY[component]]), (key, sorted(params))
        assert "kfp" not in params and "backbones" not in params, key
        checked.add(component)
    assert checked == set(PARAMS_KEY) - {"pretrain-multinode"}


@pytest.mark.parametrize(
    ("edit", "changed"),
    [
        (("evaluate", "rerank", "k1"), {"evaluate"}),
        (("pretrain", "engine", "epochs"), {"pretrain"}),  # every pretrain task, nothing else
        (("metabin", "model", "norm"), {"metabin"}),
        (("mmt", "transforms", "height"), {"mmt"}),
        (("sda", "transforms", "height"), {"sda-train", "sda-translate"}),
        (("shard", "shard_max_mb"), {"shard"}),
        (
            ("kfp", "node_selector", "cloud.google.com/gke-accelerator"),
            set(),
        ),  # cluster settings are not inputs
    ],
)
def test_an_edit_changes_only_the_inputs_of_the_tasks_that_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: tuple[str, ...], changed: set[str]
) -> None:
    monkeypatch.delenv("REIDFLOW_IMAGE", raising=False)
    before, _ = compile_spec(tmp_path, full_params(), "before")
    params = full_params()
    node = params
    for part in edit[:-1]:
        node = node[part]
    node[edit[-1]] = 99 if isinstance(node[edit[-1]], int) else "changed"
    after, _ = compile_spec(tmp_path, params, "after")
    old, new = resolved_inputs(before), resolved_inputs(after)
    assert set(old) == set(new)
    differing = {task for task in old if old[task] != new[task]}
    names = {re.sub(r"-\d+$", "", t.rsplit("/", 1)[1]) for t in differing}
    assert names == changed, (edit, sorted(differing))
