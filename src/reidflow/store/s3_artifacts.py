"""Artifacts under ``s3://bucket/prefix``.

Writing (:func:`publish_dir`): the payload is built in a local temporary directory. Publishing
refuses a prefix that holds objects but no valid ``lineage.json`` (it is not a reidflow artifact),
aborts multipart uploads a crashed writer left under the prefix, uploads every new file (files the
previous artifact already holds with the same digest are not uploaded again; into an empty prefix,
a ``.reidflow-writing`` marker goes first, so that a retry may replace what a crash left), then writes
``lineage.json`` (the swap: readers now see the new artifact), and only then deletes the previous
artifact's stale keys. A failure before the swap leaves the previous ``lineage.json`` in place; a
file whose key both versions share may then already hold new bytes, which a reader's digest check
reports (naming the file) rather than mixing versions silently. A failed upload aborts its
multipart upload.

Reading (:func:`s3_open_input`): every file key of the record is validated (relative, normalized)
before anything is downloaded; the artifact is copied to a local cache (``REIDFLOW_CACHE_DIR``,
default ``~/.cache/reidflow/s3``) and every file is checked against the digests in its lineage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from reidflow.errors import ArtifactError
from reidflow.store import s3
from reidflow.store.digests import file_sha256
from reidflow.store.lineage import LINEAGE_FILE
from reidflow.store.paths import check_record, inside
from reidflow.store.uri import URI

log = logging.getLogger(__name__)
WRITING_MARKER = ".reidflow-writing"


def cache_root() -> Path:
    return Path(os.environ.get("REIDFLOW_CACHE_DIR") or Path.home() / ".cache" / "reidflow" / "s3")


def _key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def read_record(bucket: str, prefix: str) -> dict[str, Any] | None:
    """The checked ``lineage.json`` at the prefix; None when there is none."""
    key = _key(prefix, LINEAGE_FILE)
    if not s3.exists(bucket, key):
        return None
    where = s3.s3_uri(bucket, key)
    try:
        record = json.loads(s3.get_bytes(bucket, key))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{where}: not valid JSON ({exc})") from None
    return check_record(record, where)


def check_replaceable(target: URI) -> dict[str, Any] | None:
    """The record of the artifact at ``target`` (None when the prefix is empty or holds only what an
    unfinished reidflow write left, marked by :data:`WRITING_MARKER`); an ArtifactError when the
    prefix holds objects that are not a reidflow artifact."""
    bucket, prefix = s3.split_s3(target.raw)
    try:
        record = read_record(bucket, prefix)
    except ArtifactError as exc:
        raise ArtifactError(f"--output {target.raw}: refusing to replace: {exc}") from None
    keys = [] if record is not None else list(s3.list_keys(bucket, prefix))
    if keys and _key(prefix, WRITING_MARKER) in keys:
        log.warning("%s: replacing the leftovers of an unfinished write (%d objects)", target.raw, len(keys))
    elif keys:
        raise ArtifactError(
            f"--output {target.raw}: the prefix holds objects but no {LINEAGE_FILE}; refusing to replace "
            "something that is not a reidflow artifact (choose another --output or empty it)"
        )
    return record


def publish_dir(local: Path, target: URI, record: dict[str, Any]) -> None:
    """Upload a finalized artifact directory to ``target`` (see the module docstring for the order)."""
    bucket, prefix = s3.split_s3(target.raw)
    old = check_replaceable(target)
    s3.abort_multipart_uploads(bucket, prefix)
    old_files = old["artifact"]["files"] if old else {}
    lineage_key = _key(prefix, LINEAGE_FILE)
    if old is None:  # marks the objects uploaded before lineage.json as a reidflow write's (replaceable)
        s3.put_bytes(bucket, _key(prefix, WRITING_MARKER), b"an unfinished reidflow write\n")
    new_keys = set()
    for rel, digest in sorted(record["artifact"]["files"].items()):
        key = _key(prefix, rel)
        new_keys.add(key)
        if old_files.get(rel) != digest:
            try:
                s3.upload_file(local / rel, bucket, key)
            except ArtifactError:
                _abort_quietly(bucket, prefix)
                raise
    s3.upload_file(local / LINEAGE_FILE, bucket, lineage_key)
    stale = [k for k in s3.list_keys(bucket, prefix) if k not in new_keys and k != lineage_key]
    s3.delete_keys(bucket, stale)


def _abort_quietly(bucket: str, prefix: str) -> None:
    try:
        s3.abort_multipart_uploads(bucket, prefix)
    except ArtifactError:  # the endpoint is down: the next publish to this prefix aborts them
        pass


def s3_open_input(name: str, uri: URI, fresh: bool = False) -> Any:
    from reidflow.store.artifacts import InputArtifact, verify_files
    from reidflow.store.lineage import record_digest

    bucket, prefix = s3.split_s3(uri.raw)
    record = read_record(bucket, prefix)
    if record is None:
        raise ArtifactError(f"input {name!r}: {uri.raw} is not a complete artifact (no {LINEAGE_FILE})")
    local = cache_root() / bucket / (prefix or "_root") / record["artifact"]["digest"].replace(":", "-")
    if fresh:
        shutil.rmtree(local, ignore_errors=True)
    fetch_verified(bucket, prefix, record, local)  # every file's SHA-256 checked on the way in
    digest = verify_files(local, record, uri.raw, hashes=False)
    return InputArtifact(name, uri.raw, local, digest, record, record_digest(record))


def fetch_verified(bucket: str, prefix: str, record: dict[str, Any], local: Path) -> None:
    """Copy every file of the artifact to ``local`` (skipping ones already there and intact)."""
    check_record(record, s3.s3_uri(bucket, _key(prefix, LINEAGE_FILE)))
    local.mkdir(parents=True, exist_ok=True)
    for rel, digest in sorted(record["artifact"]["files"].items()):
        key = _key(prefix, rel)
        path = inside(local, rel, s3.s3_uri(bucket, _key(prefix, LINEAGE_FILE)))
        if path.is_file() and file_sha256(path) == digest:
            continue
        s3.download_file(bucket, key, path)
        got = file_sha256(path)
        if got != digest:
            path.unlink(missing_ok=True)
            raise ArtifactError(
                f"s3://{bucket}/{key}: file {rel} changed: sha256 {got}, lineage recorded {digest}"
            )
    (local / LINEAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
