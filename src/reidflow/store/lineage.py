"""lineage.json: which data, params, code and runtime made an artifact.

Schema ``reidflow.lineage/1`` (DESIGN.md). Secrets never enter a lineage record: params and URIs are
scrubbed (credential-looking keys, URL user-info, signed-URL query strings) before they are written.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import reidflow

SCHEMA = "reidflow.lineage/1"
LINEAGE_FILE = "lineage.json"
METRICS_FILE = "metrics.json"

_SECRET_KEY = re.compile(
    r"(secret|password|passwd|token|credential|access[_-]?key|private[_-]?key|session)", re.IGNORECASE
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_SIGNED_QUERY = re.compile(
    r"\?[^\s\"']*(X-Amz-|Signature=|AWSAccessKeyId=|sig=|token=)[^\s\"']*", re.IGNORECASE
)


def scrub(value: Any) -> Any:
    """Remove anything that may be a credential from params, URIs and messages."""
    if isinstance(value, dict):
        return {
            k: ("***" if _SECRET_KEY.search(str(k)) and v not in (None, "") else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)
    if isinstance(value, str):
        text = _URL_USERINFO.sub(r"\g<scheme>***@", value)
        text = _SIGNED_QUERY.sub("?***", text)
        for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
            secret = os.environ.get(name)
            if secret and len(secret) >= 4 and secret in text:
                text = text.replace(secret, "***")
        return text
    return value


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

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "uri": scrub(self.uri), "digest": self.digest, **self.extra}


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
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "artifact": {"kind": kind, "uri": scrub(uri), "files": files, "digest": digest},
        "stage": ctx.stage_name or stage,
        "params": scrub(params),
        "params_digest": params_digest,
        "seed": seed,
        "inputs": [i.to_json() for i in inputs],
        "code": {"version": reidflow.__version__, **git_info()},
        "runtime": runtime_info(ctx, device),
        "started": started,
        "finished": now_iso(),
        "metrics": scrub(metrics or {}),
    }
