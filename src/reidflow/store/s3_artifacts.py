"""Artifacts under ``s3://bucket/prefix``.

Writing: the payload is built in a local temporary directory; publishing first removes any old
``lineage.json`` at the prefix (so a reader never sees the old marker beside new files), uploads every
file, deletes stale keys of a previous artifact, and uploads ``lineage.json`` last. A reader that finds
``lineage.json`` therefore finds a complete artifact; a failed stage leaves none.

Reading: the artifact is copied to a local cache (``REIDFLOW_CACHE_DIR``, default
``~/.cache/reidflow/s3``) and every file is checked against the digests in its lineage before use.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from reidflow.errors import ArtifactError
from reidflow.store import s3
from reidflow.store.digests import file_sha256
from reidflow.store.lineage import LINEAGE_FILE
from reidflow.store.uri import URI


def cache_root() -> Path:
    return Path(os.environ.get("REIDFLOW_CACHE_DIR") or Path.home() / ".cache" / "reidflow" / "s3")


def publish_dir(local: Path, target: URI, record: dict[str, Any]) -> None:
    """Upload a finalized artifact directory to ``target`` (see the module docstring for the order)."""
    bucket, prefix = s3.split_s3(target.raw)
    lineage_key = f"{prefix}/{LINEAGE_FILE}" if prefix else LINEAGE_FILE
    s3.delete_keys(bucket, [lineage_key])
    new_keys = set()
    for rel in record["artifact"]["files"]:
        key = f"{prefix}/{rel}" if prefix else rel
        s3.upload_file(local / rel, bucket, key)
        new_keys.add(key)
    stale = [k for k in s3.list_keys(bucket, prefix) if k not in new_keys and k != lineage_key]
    s3.delete_keys(bucket, stale)
    s3.upload_file(local / LINEAGE_FILE, bucket, lineage_key)


def s3_open_input(name: str, uri: URI, fresh: bool = False) -> Any:
    from reidflow.store.artifacts import InputArtifact

    bucket, prefix = s3.split_s3(uri.raw)
    lineage_key = f"{prefix}/{LINEAGE_FILE}" if prefix else LINEAGE_FILE
    if not s3.exists(bucket, lineage_key):
        raise ArtifactError(f"input {name!r}: {uri.raw} is not a complete artifact (no {LINEAGE_FILE})")
    record = json.loads(s3.get_bytes(bucket, lineage_key))
    local = cache_root() / bucket / (prefix or "_root") / record["artifact"]["digest"].replace(":", "-")
    if fresh:
        shutil.rmtree(local, ignore_errors=True)
    fetch_verified(bucket, prefix, record, local)
    return InputArtifact(name, uri.raw, local, record["artifact"]["digest"], record)


def fetch_verified(bucket: str, prefix: str, record: dict[str, Any], local: Path) -> None:
    """Copy every file of the artifact to ``local`` (skipping ones already there and intact)."""
    local.mkdir(parents=True, exist_ok=True)
    for rel, digest in sorted(record["artifact"]["files"].items()):
        path = local / rel
        if path.is_file() and file_sha256(path) == digest:
            continue
        key = f"{prefix}/{rel}" if prefix else rel
        s3.download_file(bucket, key, path)
        got = file_sha256(path)
        if got != digest:
            path.unlink(missing_ok=True)
            raise ArtifactError(f"s3://{bucket}/{key}: digest {got} does not match lineage ({digest})")
    (local / LINEAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
