"""What every component does around its stage call: params, run context, input/output URIs.

Imported inside component bodies (it ships in the image with the ``components`` package); it uses
only reidflow and the standard library, never kfp. KFP artifacts are duck-typed (``path``,
``metadata``), so this module is testable without a pipeline.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import yaml

from reidflow.config import apply_override
from reidflow.errors import ArtifactError, ConfigError
from reidflow.store.lineage import LINEAGE_FILE, RunContext
from reidflow.store.uri import parse_uri

POINTER_FILE = "reidflow-pointer.json"
MANIFEST_FILE = "manifest.json"
PARAMS_SOURCE = "params_yaml (pipeline parameter)"


class KfpArtifact(Protocol):
    path: str
    metadata: dict[str, Any]


def load_params_text(params_yaml: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Parse the params YAML passed as a pipeline parameter and apply ``key=value`` overrides."""
    try:
        params = yaml.safe_load(params_yaml) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{PARAMS_SOURCE}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(
            f"{PARAMS_SOURCE}: expected a mapping of stage sections, got {type(params).__name__}"
        )
    for override in overrides or []:
        apply_override(params, str(override), source=PARAMS_SOURCE)
    return params


RUN_ID_ENV = "REIDFLOW_RUN_ID"
RUN_ID_LABEL = "pipeline/runid"
"""The pod label holding the KFP run UUID (set by the KFP API server on every pod of a run); the
pipeline maps it to REIDFLOW_RUN_ID with the downward API (components.resources)."""


def current_run_id(artifact: KfpArtifact | None = None) -> str:
    """The id of the pipeline run this task belongs to: ``REIDFLOW_RUN_ID`` (from the pod's
    ``pipeline/runid`` label on a cluster; set by ``run_local`` locally).

    The run id is deliberately not a task input: KFP's cache key covers every input parameter, so a
    per-run value there would make every task of every run a cache miss. Without the variable, an id
    derived from the artifact's per-execution URI stands in (unique per execution, the same for the
    retries of one).
    """
    import hashlib

    run_id = os.environ.get(RUN_ID_ENV, "").strip()
    if run_id:
        return run_id
    uri = getattr(artifact, "uri", "") if artifact is not None else ""
    return "exec-" + hashlib.sha256(uri.encode()).hexdigest()[:16] if uri else ""


def run_context(run_id: str, task_name: str) -> RunContext:
    """Lineage's runtime block for a KFP task: orchestrator kfp, the run id, the task name, the image.

    The image is recorded only when the pipeline pinned it by digest (the task env says so).
    """
    return RunContext(
        orchestrator="kfp",
        run_id=run_id or None,
        stage_name=task_name or None,
        image=os.environ.get("REIDFLOW_IMAGE_DIGEST") or None,
    )


def output_uri(artifact: KfpArtifact, artifact_root: str, run_id: str, task_name: str, item: str = "") -> str:
    """Where a stage writes: the KFP artifact path, or ``<artifact_root>/<run>/<task>[/<item>]`` on S3.

    ``run_id`` is :func:`current_run_id`; ``task_name`` the backend's placeholder passed as a task
    argument (a component default stays literal on a cluster: refused here); ``item`` separates the
    iterations of a ParallelFor, which share one task name. The S3 location is stable across retries
    of a task in a run, which is what lets a retried pod find its checkpoints.
    """
    for value, what in ((run_id, "run_id"), (task_name, "task_name")):
        if "{{$" in value:
            raise ConfigError(
                f"{what} {value!r}: a KFP placeholder reached the component unresolved; pass it from "
                "the pipeline body as a task argument (dsl.PIPELINE_JOB_ID_PLACEHOLDER / "
                "dsl.PIPELINE_TASK_NAME_PLACEHOLDER), never as a component default"
            )
    if not artifact_root:
        return artifact.path
    if not artifact_root.startswith("s3://"):
        raise ConfigError(f"artifact_root {artifact_root!r}: expected '' or s3://bucket/prefix")
    parts = [
        artifact_root.rstrip("/"),
        _segment(run_id or "run", "run_id"),
        _segment(task_name or "task", "task"),
    ]
    if item:
        parts.append(_segment(item, "item"))
    return "/".join(parts)


def _segment(value: str, what: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._=-]+", "-", value).strip("-.")
    if not cleaned:
        raise ConfigError(f"{what} {value!r}: nothing usable for an S3 key segment")
    return cleaned


def store_uri(artifact: KfpArtifact) -> str:
    """The object-store URI of an artifact: where the stage wrote it on S3 (``metadata.uri``, set by
    :func:`publish`), else the KFP artifact's own ``uri`` (under the pipeline root, uploaded there by
    the launcher). Never ``artifact.path``: that is a path inside one pod."""
    uri = (artifact.metadata or {}).get("uri") or getattr(artifact, "uri", "") or ""
    if not uri:
        raise ArtifactError(f"{artifact.path}: the KFP artifact names no URI (was it produced upstream?)")
    return str(uri)


def readable_uri(uri: str) -> str:
    """``uri`` as reidflow reads it: ``s3://`` as is; KFP's ``minio://bucket/key`` as ``s3://bucket/key``
    (endpoint and credentials from the AWS_* variables, i.e. the S3 secret); a local path as is (the
    pipeline root of a local run). Other stores (``gs://`` ...) are refused with the fix."""
    if uri.startswith("minio://"):
        return "s3://" + uri[len("minio://") :]
    if uri.startswith("s3://") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return uri
    raise ConfigError(
        f"{uri}: reidflow reads artifacts from s3:// (or KFP's minio://) stores only; with another "
        "pipeline root set kfp.artifact_root: s3://bucket/prefix so the stages write to S3 themselves"
    )


def input_uri(artifact: KfpArtifact) -> str:
    """The URI a downstream stage reads a declared input artifact from (its object-store URI)."""
    return readable_uri(store_uri(artifact))


def read_record(uri: str) -> dict[str, Any]:
    """lineage.json of a complete artifact (local or S3) without fetching the payload."""
    parsed = parse_uri(uri)
    if parsed.is_s3:
        from reidflow.store import s3

        bucket, prefix = s3.split_s3(uri)
        key = f"{prefix}/{LINEAGE_FILE}" if prefix else LINEAGE_FILE
        if not s3.exists(bucket, key):
            raise ArtifactError(f"{uri}: not a complete artifact (no {LINEAGE_FILE})")
        return json.loads(s3.get_bytes(bucket, key))
    from reidflow.store.artifacts import read_lineage

    return read_lineage(parsed.local_path)


def publish(artifact: KfpArtifact, uri: str, **extra: Any) -> str:
    """Describe the written stage artifact on the KFP artifact; returns its content digest.

    Metadata carries the object-store URI downstream tasks read (``uri``: the S3 location the stage
    wrote, or the KFP artifact's own URI when it wrote into the KFP artifact), digest, kind and params
    digest; never a pod-local path. When the stage wrote to S3, the KFP artifact directory holds only a
    pointer file naming that URI.
    """
    record = read_record(uri)
    digest = record["artifact"]["digest"]
    into_kfp = uri == artifact.path
    artifact.metadata.update(
        {
            "uri": (getattr(artifact, "uri", "") or uri) if into_kfp else uri,
            "digest": digest,
            "kind": record["artifact"].get("kind"),
            "stage": record.get("stage"),
            "params_digest": record.get("params_digest"),
            **extra,
        }
    )
    if not into_kfp:
        pointer = Path(artifact.path)
        pointer.mkdir(parents=True, exist_ok=True)
        (pointer / POINTER_FILE).write_text(json.dumps({"uri": uri, "digest": digest}, indent=2) + "\n")
    return digest


def dataset_subdir(params: dict[str, Any], dataset: str, synth_root: str) -> str | None:
    """Path of ``dataset``'s root relative to the synth output, or None if it is not synthetic.

    params.yaml names dataset roots as the DVC layout has them (``data/synth/<domain>``); in the
    pipeline the synth stage's artifact stands in for ``synth_root``.
    """
    entry = (params.get("datasets") or {}).get(dataset)
    if not isinstance(entry, dict) or "root" not in entry:
        raise ConfigError(f"{PARAMS_SOURCE}: datasets.{dataset}.root is missing (expected a dataset folder)")
    root = PurePosixPath(str(entry["root"]).rstrip("/"))
    base = PurePosixPath(synth_root.rstrip("/"))
    try:
        rel = root.relative_to(base)
    except ValueError:
        return None
    return str(rel) if str(rel) not in ("", ".") else None


def shard_raw_uri(params: dict[str, Any], dataset: str, synth_uri: str, synth_root: str) -> str | None:
    """The raw folder of ``dataset`` for the shard stage: inside the synth artifact, or None (use its root)."""
    subdir = dataset_subdir(params, dataset, synth_root)
    if subdir is None:
        return None
    if parse_uri(synth_uri).is_s3:
        base = local_copy(synth_uri)  # a digest-verified local copy
    else:
        base = Path(synth_uri)
    raw = base / subdir
    if not raw.is_dir():
        raise ArtifactError(
            f"datasets.{dataset}.root: {subdir!r} is not in the synth artifact {synth_uri} "
            f"(it has: {sorted(p.name for p in base.iterdir() if p.is_dir())})"
        )
    return str(raw)


def dataset_roles(params: dict[str, Any]) -> dict[str, str]:
    return {
        name: str((entry or {}).get("role", "source"))
        for name, entry in (params.get("datasets") or {}).items()
    }


def write_manifest(directory: str, entries: list[dict[str, Any]]) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).write_text(json.dumps({"shards": entries}, indent=2) + "\n")


def read_manifest(artifact: KfpArtifact) -> list[dict[str, Any]]:
    """The entries of a declared manifest input (downloaded into this pod by the launcher); their
    ``uri`` is an object-store URI, returned in the form reidflow reads (:func:`readable_uri`)."""
    path = Path(artifact.path) / MANIFEST_FILE
    try:
        entries = list(json.loads(path.read_text())["shards"])
    except FileNotFoundError:
        raise ArtifactError(f"{path}: shard manifest missing (was the collect task skipped?)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a shard manifest ({exc})") from None
    return [{**e, "uri": readable_uri(str(e["uri"]))} for e in entries]


def manifest_digest(entries: list[dict[str, Any]]) -> str:
    """One digest over the manifest's (dataset, role, content digest) triples: the cache key of the
    tasks that read it changes when a shard's content or a dataset's role does."""
    import hashlib

    lines = sorted(f"{e.get('dataset')}\t{e.get('role')}\t{e.get('digest')}" for e in entries)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def uris_by_role(entries: list[dict[str, Any]], roles: set[str]) -> list[str]:
    return [e["uri"] for e in entries if e.get("role") in roles]


def training_inputs(entries: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    """(source shard URIs, the target shard URI or None) for pretraining."""
    sources = uris_by_role(entries, {"source"})
    targets = uris_by_role(entries, {"target"})
    if not sources:
        raise ConfigError(
            "datasets: no dataset with role 'source' among the sharded datasets "
            f"{[e.get('dataset') for e in entries]}; pretraining needs at least one"
        )
    if len(targets) > 1:
        raise ConfigError(
            f"datasets: {len(targets)} datasets have role 'target'; pretraining adapts BN to one"
        )
    return sources, (targets[0] if targets else None)


def evaluation_sets(entries: list[dict[str, Any]]) -> list[str]:
    """Shard URIs evaluated: the unseen ('eval') datasets and the adaptation target."""
    sets = uris_by_role(entries, {"eval", "target"})
    if not sets:
        raise ConfigError(
            "datasets: no dataset with role 'eval' or 'target' among the sharded datasets "
            f"{[e.get('dataset') for e in entries]}; evaluation needs one"
        )
    return sets


def numeric_leaves(tree: Any, prefix: str = "", limit: int = 200) -> dict[str, float]:
    """Flatten nested metrics to ``a.b.c -> float`` (numbers only, booleans excluded), at most ``limit``."""
    out: dict[str, float] = {}

    def walk(node: Any, key: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[key] = float(node)

    walk(tree, prefix)
    return out


class private_s3_cache:
    """Point the S3 read cache at a directory private to this process for the block.

    Parallel tasks of a local run share one cache directory, and two processes downloading the same
    file there collide on its temporary ``.part`` name. In a cluster every task has its own pod.
    """

    def __enter__(self) -> Path:
        from reidflow.store.s3_artifacts import cache_root

        self._previous = os.environ.get("REIDFLOW_CACHE_DIR")
        private = cache_root() / f"proc-{os.getpid()}"
        os.environ["REIDFLOW_CACHE_DIR"] = str(private)
        return private

    def __exit__(self, *exc: object) -> None:
        if self._previous is None:
            os.environ.pop("REIDFLOW_CACHE_DIR", None)
        else:
            os.environ["REIDFLOW_CACHE_DIR"] = self._previous


def local_copy(uri: str) -> Path:
    """A local directory holding the artifact at ``uri`` (S3 artifacts are fetched and verified)."""
    if not parse_uri(uri).is_s3:
        return Path(uri)
    from reidflow.store.artifacts import open_input

    with private_s3_cache():
        return open_input("artifact", uri).path


CLI_STAGE_COMMANDS = ("pretrain", "metabin", "sda", "mmt")
"""`reidflow <command>`s the components launch as processes (torchrun, PyTorchJob); checked by tests."""


def stage_cli_args(
    stage: str,
    params_file: str,
    inputs: list[tuple[str, str]],
    output: str,
    task_name: str,
    mode: str = "",
) -> list[str]:
    """Arguments of ``reidflow <stage> [mode]`` following the stage contract (``--input NAME=URI``);
    ``mode`` is the sub-mode of a stage that has several (``sda train``)."""
    if stage not in CLI_STAGE_COMMANDS:
        raise ConfigError(
            f"stage {stage!r} is not launched through the CLI (known: {list(CLI_STAGE_COMMANDS)})"
        )
    args = [stage, *([mode] if mode else []), "--params", params_file]
    for name, uri in inputs:
        args += ["--input", f"{name}={uri}"]
    return args + ["--output", output, "--orchestrator", "kfp", "--stage-name", task_name]


def torchrun_argv(nproc_per_node: int, cli_args: list[str]) -> list[str]:
    """One pod, N processes (one per GPU): ``torchrun --standalone --nproc_per_node=N -m reidflow.cli …``."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        "-m",
        "reidflow.cli",
        *cli_args,
    ]


def run_torchrun(
    stage: str,
    nproc_per_node: int,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
    output: str,
    run_id: str,
    task_name: str,
    mode: str = "",
    resume: bool = False,
) -> None:
    """Run a stage under torchrun in this pod with the resolved params (overrides already applied)."""
    import subprocess
    import tempfile

    from reidflow.errors import ReidflowError

    with tempfile.TemporaryDirectory(prefix="reidflow-params-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        cli_args = stage_cli_args(stage, str(params_file), inputs, output, task_name, mode)
        argv = torchrun_argv(nproc_per_node, [*cli_args, *(["--resume"] if resume else [])])
        env = {**os.environ, "REIDFLOW_RUN_ID": run_id, "REIDFLOW_ORCHESTRATOR": "kfp"}
        result = subprocess.run(argv, env=env, check=False)
        if result.returncode != 0:
            raise ReidflowError(
                f"{stage} under torchrun (nproc_per_node={nproc_per_node}) exited with "
                f"status {result.returncode}; see the task log above"
            )


def metrics_instance(task_name: str, item: str = "") -> str:
    """Pushgateway grouping instance of a task (the run id is a label of its own: see reidflow.obs.live)."""
    return "kfp-" + _segment("-".join(p for p in (task_name or "task", item) if p), "instance")
