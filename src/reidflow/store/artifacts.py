"""Atomic artifact directories.

A stage writes its payload into a private temporary directory; on success the files are hashed,
``lineage.json`` is written last and the directory is moved into place in one rename. A failed stage
leaves nothing that looks complete: the temporary directory is removed and an existing artifact at
the destination is left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reidflow.errors import ArtifactError
from reidflow.store.digests import combined_digest, tree_digests
from reidflow.store.lineage import LINEAGE_FILE, METRICS_FILE, InputRef, RunContext, build_record, now_iso
from reidflow.store.uri import URI, parse_uri


@dataclass
class ArtifactWriter:
    """Handle given to a stage while it writes: ``path`` is where the payload goes."""

    path: Path
    uri: URI
    metrics: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


@dataclass(frozen=True)
class InputArtifact:
    """A resolved input: where its files are locally and the digest recorded in lineage."""

    name: str
    uri: str
    path: Path
    digest: str
    lineage: dict[str, Any] | None

    def ref(self) -> InputRef:
        extra: dict[str, Any] = {}
        if self.lineage is None:
            dvc_md5 = dvc_tracked_md5(self.path)
            if dvc_md5:
                extra["dvc_md5"] = dvc_md5
            enclosing = enclosing_artifact(self.path)
            if enclosing is not None:  # raw data written by a stage (e.g. synth): link to that artifact
                where, record = enclosing
                extra["within"] = _relative_uri(self.uri, self.path, where)
                extra["within_digest"] = record["artifact"]["digest"]
        return InputRef(self.name, self.uri, self.digest, extra)


@contextmanager
def write_artifact(
    uri: str | Path,
    *,
    kind: str,
    stage: str,
    params: dict[str, Any],
    params_digest: str,
    seed: int | None,
    inputs: list[InputArtifact],
    ctx: RunContext | None = None,
    started: str | None = None,
) -> Iterator[ArtifactWriter]:
    """Context manager: yields a writer; publishes the artifact atomically when the block succeeds.

    ``started``: when the stage began (ISO time), if that was before the artifact was opened (e.g.
    a training stage opens its artifact only after training); default now.
    """
    target = parse_uri(uri)
    if target.is_s3:  # built locally, uploaded on success (lineage.json last)
        tmp = Path(tempfile.mkdtemp(prefix="reidflow-s3-out-"))
    else:
        dest = target.local_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    writer = ArtifactWriter(path=tmp, uri=target)
    started = started or now_iso()
    try:
        yield writer
        record = finalize_directory(
            tmp,
            writer,
            kind=kind,
            stage=stage,
            params=params,
            params_digest=params_digest,
            seed=seed,
            inputs=inputs,
            ctx=ctx or RunContext.from_env(),
            started=started,
        )
        if target.is_s3:
            from reidflow.store.s3_artifacts import publish_dir

            publish_dir(tmp, target, record)
        else:
            _replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful local rename; else cleanup


def finalize_directory(
    root: Path,
    writer: ArtifactWriter,
    *,
    kind: str,
    stage: str,
    params: dict[str, Any],
    params_digest: str,
    seed: int | None,
    inputs: list[InputArtifact],
    ctx: RunContext,
    started: str,
) -> dict[str, Any]:
    """Write metrics.json, hash the payload and write lineage.json (last). Returns the record."""
    if writer.metrics:
        (root / METRICS_FILE).write_text(json.dumps(writer.metrics, indent=2, sort_keys=True) + "\n")
    files = tree_digests(root, exclude=frozenset({LINEAGE_FILE}))
    record = build_record(
        kind=kind,
        uri=str(writer.uri),
        files=files,
        digest=combined_digest(files),
        stage=stage,
        params=params,
        params_digest=params_digest,
        seed=seed,
        inputs=[i.ref() for i in inputs],
        ctx=ctx,
        device=writer.device,
        started=started,
        metrics=writer.metrics,
    )
    (root / LINEAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return record


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest``; an old ``dest`` is moved aside first and removed after the swap."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def read_lineage(path: Path) -> dict[str, Any]:
    lineage_file = path / LINEAGE_FILE
    try:
        return json.loads(lineage_file.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not a complete artifact (no {LINEAGE_FILE})") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{lineage_file}: not valid JSON ({exc})") from None


def is_current(output: str | Path, params_digest: str) -> bool:
    """True when ``output`` is a complete local artifact made from params with ``params_digest`` by this
    code version: a deterministic stage may keep it instead of recomputing it."""
    import reidflow

    lineage_file = Path(str(output)) / LINEAGE_FILE
    if str(output).startswith("s3://") or not lineage_file.is_file():
        return False
    try:
        record = json.loads(lineage_file.read_text())
    except json.JSONDecodeError:
        return False
    return (
        record.get("params_digest") == params_digest
        and record.get("code", {}).get("version") == reidflow.__version__
    )


def open_input(
    name: str, uri: str | Path, *, require_artifact: bool = True, fresh: bool = False
) -> InputArtifact:
    """Resolve an input URI to local files plus the digest lineage records for it.

    A reidflow artifact is identified by the digest in its ``lineage.json``. Raw data (a dataset
    folder with no lineage, e.g. under ``data/``) is accepted when ``require_artifact`` is false and
    is identified by the digest of its files. ``fresh`` re-downloads remote artifacts instead of
    trusting the local cache (used by ``lineage verify``).
    """
    parsed = parse_uri(uri)
    if parsed.is_s3:
        from reidflow.store.s3_artifacts import s3_open_input

        return s3_open_input(name, parsed, fresh=fresh)
    path = parsed.local_path
    if not path.exists():
        raise ArtifactError(f"input {name!r}: {path} does not exist")
    if (path / LINEAGE_FILE).is_file():
        record = read_lineage(path)
        return InputArtifact(name, str(uri), path, record["artifact"]["digest"], record)
    if require_artifact:
        raise ArtifactError(
            f"input {name!r}: {path} is not a complete artifact (no {LINEAGE_FILE}); "
            "was the stage that writes it interrupted?"
        )
    files = tree_digests(path) if path.is_dir() else {path.name: tree_digests(path.parent)[path.name]}
    return InputArtifact(name, str(uri), path, combined_digest(files), None)


def enclosing_artifact(path: Path, max_levels: int = 4) -> tuple[Path, dict[str, Any]] | None:
    """The nearest parent directory of ``path`` that is a complete artifact, with its lineage."""
    for parent in list(path.parents)[:max_levels]:
        if (parent / LINEAGE_FILE).is_file():
            return parent, read_lineage(parent)
    return None


def _relative_uri(uri: str, path: Path, parent: Path) -> str:
    """The URI of ``parent`` written the way ``uri`` (which names ``path``) was written."""
    depth = len(path.relative_to(parent).parts)
    given = Path(str(uri))
    return str(given.parents[depth - 1]) if depth <= len(given.parents) else str(parent)


def dvc_tracked_md5(path: Path) -> str | None:
    """md5 recorded by the nearest ``<dir>.dvc`` file tracking ``path`` or one of its parents."""
    try:
        resolved = path.resolve()
    except OSError:
        return None
    for parent in [resolved, *resolved.parents]:
        if not parent.name:
            break
        dvc_file = parent.with_name(parent.name + ".dvc")
        if dvc_file.is_file():
            return _md5_from_dvc_file(dvc_file)
    return None


def _md5_from_dvc_file(dvc_file: Path) -> str | None:
    import yaml

    try:
        doc = yaml.safe_load(dvc_file.read_text()) or {}
        outs = doc.get("outs") or []
        return str(outs[0]["md5"]) if outs and "md5" in outs[0] else None
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None
