"""The rules a Kubeflow Pipelines backend enforces, as checks over a compiled pipeline package.

``kfp.local`` forgives what a backend does not: placeholders in component defaults (left literal by
the backend), paths of another task's pod, artifacts nobody produced, secret keys that are missing,
and cache keys that change with every edit. Each ``check_*`` encodes one rule over a whole package;
tests/unit/test_kfp_conformance.py applies them to the main pipeline, tests/unit/test_kfp_visda.py to
the VisDA pipeline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from components import runtime
from pipelines.runner import compile_pipeline

DIGEST = "sha256:" + "cd" * 32
PLACEHOLDER = re.compile(r"\{\{\$\.pipeline_[a-z_]+\}\}")
PER_RUN = ("{{$.pipeline_job_uuid}}", "{{$.pipeline_task_uuid}}", "{{$.pipeline_job_name}}")


def compile_spec(
    tmp_path: Path,
    params: dict[str, Any] | Path,
    name: str = "p",
    pipeline: str = "reid",
    overrides: Sequence[str] = (),
) -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform executors) of ``pipeline`` compiled from ``params`` (a dict,
    written to ``<name>.yaml``, or a params file)."""
    if isinstance(params, Path):
        params_file = params
    else:
        params_file = tmp_path / f"{name}.yaml"
        params_file.write_text(yaml.safe_dump(params))
    out = compile_pipeline(
        params_file, tmp_path / f"{name}-pipeline.yaml", list(overrides), pipeline=pipeline
    )
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


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


def resolved_inputs(spec: dict) -> dict[str, dict[str, Any]]:
    """Each task's inputs with root parameters replaced by their default values."""
    out = {}
    for dag, key, task, inputs in leaf_tasks(spec):
        values = {}
        for name, source in inputs.items():
            values[name] = source[2] if source[0] == "param" else source
        out[f"{dag}/{key}"] = values
    return out


# ---- rule 1: placeholders only as task arguments; nothing that changes from run to run ----


def check_placeholders(spec: dict, unnamed: set[str]) -> None:
    """No placeholder in a component's or the pipeline's defaults; every task but those running the
    ``unnamed`` components (which write no reidflow artifact) takes the task name as a task argument."""
    for name, comp in spec["components"].items():
        for param, definition in comp.get("inputDefinitions", {}).get("parameters", {}).items():
            assert not PLACEHOLDER.search(json.dumps(definition.get("defaultValue", ""))), (name, param)
    for param, definition in spec["root"]["inputDefinitions"]["parameters"].items():
        assert not PLACEHOLDER.search(json.dumps(definition.get("defaultValue", ""))), param
    for dag, key, task, inputs in leaf_tasks(spec):
        definitions = component_of(spec, task)["inputDefinitions"]["parameters"]
        if base_name(task) in unnamed:
            assert "task_name" not in definitions, (dag, key)
            continue
        assert "task_name" in definitions, (dag, key, "writes an artifact: needs the task name")
        assert not definitions["task_name"].get("isOptional"), (key, "task_name must have no default")
        assert inputs["task_name"] == ("const", "{{$.pipeline_task_name}}"), (dag, key)


def check_no_per_run_inputs(spec: dict, platform: dict) -> None:
    """KFP's cache key covers every input parameter: a per-run value (the run id, a task uuid) as an
    input would make every task of every run a cache miss. The run id reaches the pods as an
    environment variable from their ``pipeline/runid`` label instead."""
    for _, key, _, inputs in leaf_tasks(spec):
        for name, source in inputs.items():
            assert not any(p in json.dumps(source) for p in PER_RUN), (key, name, source)
    for executor in spec["deploymentSpec"]["executors"]:
        assert {"name": "REIDFLOW_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in platform[
            executor
        ]["fieldPathAsEnv"], executor


def looped_task_names(spec: dict) -> set[str]:
    """The names of the tasks inside ParallelFor loops, after checking that task names are unique:
    the backend resolves the task-name placeholder to the task's name, and S3 prefixes
    (<root>/<run>/<task>[/<item>]) stay distinct only if no two tasks share one."""
    names = [task["taskInfo"]["name"] for _, _, task, _ in leaf_tasks(spec)]
    assert len(names) == len(set(names)), sorted(names)
    return {
        task["taskInfo"]["name"] for dag, _, task, _ in leaf_tasks(spec) if dag.startswith("comp-for-loop")
    }


# ---- rule 2: every consumed artifact is produced upstream ----


def check_consumed_artifacts(spec: dict) -> int:
    """Every declared input artifact is given, by a task that runs before (or a loop's collected
    output that names a subtask's); returns how many artifact inputs were checked."""

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

    consumed = check(spec["root"]["dag"], "root")
    assert "importer" not in json.dumps(spec), "nothing enters the pipeline by a path or URI of its own"
    return consumed


# ---- rule 4: secrets' optional flags ----


def check_secret_keys(spec: dict, platform: dict) -> None:
    """Only the keys every store needs are required; the endpoint and region are optional."""
    for executor in spec["deploymentSpec"]["executors"]:
        mappings = platform[executor]["secretAsEnv"]
        required = {k["secretKey"] for m in mappings if not m.get("optional") for k in m["keyToEnv"]}
        optional = {k["secretKey"] for m in mappings if m.get("optional") for k in m["keyToEnv"]}
        assert required == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, executor
        assert {"AWS_ENDPOINT_URL", "AWS_REGION"} <= optional, executor
        assert not required & optional


# ---- rule 5: resources (and a timeout) on every task; GPUs and placement on training tasks ----


def check_training_resources(spec: dict, platform: dict, training: set[str], gpus: str) -> set[str]:
    """Every task has requests, limits and a timeout; every task running a ``training`` component
    ``gpus`` GPUs, the training resources (kfp's defaults: 4 CPUs, 32Gi), a node selector,
    tolerations, a memory-backed /dev/shm and checkpoint syncing. Returns the training components
    found."""
    executors = spec["deploymentSpec"]["executors"]
    trained = set()
    for _, key, task, _ in leaf_tasks(spec):
        name = executor_name(spec, task)
        res = executors[name]["container"]["resources"]
        for field in ("cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"):
            assert field in res, (key, field)
        assert int(platform[name]["activeDeadlineSeconds"]) > 0, key
        if base_name(task) not in training:
            assert "accelerator" not in res, key
            continue
        trained.add(base_name(task))
        assert res["accelerator"]["resourceCount"] == gpus, key
        assert (res["cpuRequest"], res["memoryLimit"]) == (4.0, 34.359738368), key
        assert platform[name]["nodeSelector"]["labels"], key
        assert platform[name]["tolerations"], key
        [shm] = platform[name]["emptyDirMounts"]
        assert (shm["mountPath"], shm["medium"]) == ("/dev/shm", "Memory"), key
        env = {e["name"]: e["value"] for e in executors[name]["container"].get("env", [])}
        assert float(env["REIDFLOW_CHECKPOINT_SYNC_S"]) > 0, key
    return trained


# ---- rule 6: per-task params only, so the cache keys mean something ----


def check_task_sections(
    spec: dict, params_key: Mapping[str, str], task_sections: Mapping[str, Sequence[str]]
) -> set[str]:
    """Every task with params gets only the sections of its ``task_sections[params_key[component]]``
    (never ``kfp`` nor ``backbones``); returns the components checked."""
    checked = set()
    for _, key, task, inputs in leaf_tasks(spec):
        if "params_yaml" not in inputs:
            continue
        component = base_name(task)
        params = runtime.load_params_text(inputs["params_yaml"][2])
        assert set(params) <= set(task_sections[params_key[component]]), (key, sorted(params))
        assert "kfp" not in params and "backbones" not in params, key
        checked.add(component)
    return checked


def edited(params: dict[str, Any], edit: Sequence[str]) -> dict[str, Any]:
    """``params`` with the value at the path ``edit`` changed (99 for an int, else "changed")."""
    node = params
    for part in edit[:-1]:
        node = node[part]
    node[edit[-1]] = 99 if isinstance(node[edit[-1]], int) else "changed"
    return params


def changed_components(before: dict, after: dict) -> set[str]:
    """The tasks (by name, ``-N`` suffix dropped) whose resolved inputs differ between two packages
    of the same shape."""
    old, new = resolved_inputs(before), resolved_inputs(after)
    assert set(old) == set(new)
    differing = {task for task in old if old[task] != new[task]}
    return {re.sub(r"-\d+$", "", t.rsplit("/", 1)[1]) for t in differing}
