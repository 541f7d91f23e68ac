"""The compiled pipeline YAML against the rules a Kubeflow Pipelines backend enforces (no cluster).

``kfp.local`` forgives what a backend does not: placeholders in component defaults (left literal by
the backend), paths of another task's pod, artifacts nobody produced, secret keys that are missing,
and cache keys that change with every edit. Each test encodes one rule over the whole package, with
every optional task (camera, MetaBIN, SDA, MMT+) switched on; the rules themselves live in
tests/kfp_rules.py (tests/unit/test_kfp_visda.py applies them to the VisDA pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from components import runtime
from pipelines.reid_pipeline import TASK_SECTIONS

from tests import kfp_rules as rules
from tests.kfp_rules import DIGEST, compile_spec

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


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    import os

    os.environ.pop("REIDFLOW_IMAGE", None)
    return compile_spec(tmp_path_factory.mktemp("conformance"), full_params())


# ---- rule 1: placeholders only as task arguments ----


def test_placeholders_are_task_arguments_never_component_defaults(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    # every task but collect-shards (it writes no reidflow artifact) takes the task name
    rules.check_placeholders(spec, unnamed={"collect-shards"})


def test_no_task_input_changes_from_run_to_run(compiled: tuple[dict, dict]) -> None:
    """KFP's cache key covers every input parameter: a per-run value (the run id, a task uuid) as an
    input would make every task of every run a cache miss. The run id reaches the pods as an
    environment variable from their ``pipeline/runid`` label instead."""
    rules.check_no_per_run_inputs(*compiled)


def test_task_names_are_unique_so_prefixes_are(compiled: tuple[dict, dict]) -> None:
    """The backend resolves the task-name placeholder to the task's name: S3 prefixes
    (<root>/<run>/<task>[/<item>]) stay distinct only if no two tasks share one."""
    spec, _ = compiled
    looped = rules.looped_task_names(spec)
    assert looped == {"shard", "pretrain", "pretrain-seed1", "mmt"}  # these add the loop item


# ---- rule 2: every consumed artifact is produced upstream ----


def test_every_consumed_artifact_is_produced_upstream(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    assert rules.check_consumed_artifacts(spec) >= 20


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
    rules.check_secret_keys(*compiled)


# ---- rule 5: resources (and a timeout) on every training task ----


def test_every_training_task_has_resources_placement_and_timeout(compiled: tuple[dict, dict]) -> None:
    trained = rules.check_training_resources(*compiled, training=TRAINING_COMPONENTS, gpus="2")
    assert trained == TRAINING_COMPONENTS


# ---- rule 6: per-task params only, so the cache keys mean something ----


def test_each_task_receives_only_the_sections_it_reads(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    checked = rules.check_task_sections(spec, PARAMS_KEY, TASK_SECTIONS)
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
    after, _ = compile_spec(tmp_path, rules.edited(full_params(), edit), "after")
    assert rules.changed_components(before, after) == changed, edit
