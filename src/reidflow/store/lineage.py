"""lineage.json: which data, params, code and runtime made an artifact.

Schema ``reidflow.lineage/1`` (README.md, "Lineage"). Secrets never enter a lineage record: params and URIs are
scrubbed (:mod:`reidflow.store.scrub`) before they are written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import reidflow
from reidflow.store.scrub import scrub

SCHEMA = "reidflow.lineage/1"
LINEAGE_FILE = "lineage.json"
METRICS_FILE = "metrics.json"

VOLATILE_FIELDS = (
    "started",
    "finished",
    "artifact.uri",
    "artifact.record_digest",
    "runtime.host",
    "runtime.run_id",
    "runtime.orchestrator",
    "runtime.image",
    "runtime.timing",
)
"""Record fields left out of the record digest: when and where a run happened, and how fast, not what
it made.

Everything else (kind, files, sizes, file digest, stage, params, params digest, seed, inputs with the
digests they pinned, code version and commit, python/torch/device, metrics) is covered by
``artifact.record_digest``, which children pin next to the file digest: editing any of it in an
ancestor's ``lineage.json`` fails ``reidflow lineage verify``."""


def record_digest(record: dict[str, Any]) -> str:
    """Digest of ``record`` without its :data:`VOLATILE_FIELDS` (canonical JSON)."""
    stable = copy.deepcopy(record)
    for dotted in VOLATILE_FIELDS:
        *parents, leaf = dotted.split(".")
        node: Any = stable
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    blob = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class RunContext:
    """Who runs a stage: orchestrator (dvc | kfp | cli), its run id and stage name, the image."""

    orchestrator: str = "cli"
    run_id: str | None = None
    stage_name: str | None = None
    image: str | None = None

    @classmethod
    def from_env(cls, orchestrator: str | None = None, stage_name: str | None = None) -> RunContext:
        return cls(
            orchestrator=orchestrator or os.environ.get("REIDFLOW_ORCHESTRATOR", "cli"),
            run_id=os.environ.get("REIDFLOW_RUN_ID") or None,
            stage_name=stage_name or os.environ.get("REIDFLOW_STAGE_NAME") or None,
            image=os.environ.get("REIDFLOW_IMAGE_DIGEST") or None,
        )


@dataclass
class InputRef:
    """A parent artifact as recorded in lineage: its name for the stage, URI and content digest."""

    name: str
    uri: str
    digest: str
    extra: dict[str, Any] = field(default_factory=dict)
    record_digest: str | None = None  # the parent's record digest as read (None for raw data)

    def to_json(self) -> dict[str, Any]:
        pinned = {"record_digest": self.record_digest} if self.record_digest else {}
        return {"name": self.name, "uri": scrub(self.uri), "digest": self.digest, **pinned, **self.extra}


def git_info(start: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the working tree the code runs from (null outside git)."""
    cwd = str(start or Path.cwd())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": os.environ.get("REIDFLOW_GIT_COMMIT") or None, "git_dirty": None}


def runtime_info(ctx: RunContext, device: str = "cpu") -> dict[str, Any]:
    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch_version = None
    return {
        "python": platform.python_version(),
        "torch": torch_version,
        "device": device,
        "host": socket.gethostname(),
        "image": ctx.image,
        "orchestrator": ctx.orchestrator,
        "run_id": ctx.run_id,
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_record(
    *,
    kind: str,
    uri: str,
    files: dict[str, str],
    digest: str,
    stage: str,
    params: dict[str, Any],
    params_digest: str,
    seed: int | None,
    inputs: list[InputRef],
    ctx: RunContext,
    device: str,
    started: str,
    metrics: dict[str, Any] | None,
    sizes: dict[str, int] | None = None,
    timing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a finished artifact; ``artifact.record_digest`` covers all but the volatile fields."""
    artifact: dict[str, Any] = {"kind": kind, "uri": scrub(uri), "files": files, "digest": digest}
    if sizes is not None:
        artifact["sizes"] = sizes
    record = {
        "schema": SCHEMA,
        "artifact": artifact,
        "stage": ctx.stage_name or stage,
        "params": scrub(params),
        "params_digest": params_digest,
        "seed": seed,
        "inputs": [i.to_json() for i in inputs],
        "code": {"version": reidflow.__version__, **git_info()},
        "runtime": {**runtime_info(ctx, device), **({"timing": timing} if timing else {})},
        "started": started,
        "finished": now_iso(),
        "metrics": scrub(metrics or {}),
    }
    # over the record as a reader will parse it (JSON has no tuples, no int keys)
    artifact["record_digest"] = record_digest(json.loads(json.dumps(record, default=str)))
    return record
