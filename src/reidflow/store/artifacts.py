"""Atomic artifact directories.

A stage writes its payload into a private temporary directory ``.<name>.tmp-<pid>-<rand>-<host>``
beside the destination; on success the files are hashed, ``lineage.json`` is written last and the
directory is moved into place. A failed stage leaves nothing that looks complete: the temporary
directory is removed and an existing artifact at the destination is left untouched.

Only a previous reidflow artifact (a directory with a valid ``lineage.json``) or an empty directory
is ever replaced (:func:`check_output`, called by the CLI before any work and again before
publishing); anything else at ``--output`` is refused.

Replacing is two renames: the old artifact to ``.<name>.old-<pid>-<rand>-<host>``, then the new one
into place. A crash between them leaves the old artifact complete under its ``.old-*`` name, and the
next access to the destination (:func:`settle`: any later write, ``check_output``, ``open_input``,
``lineage verify``) renames it back when its writer is no longer running. ``settle`` also removes
``.old-*`` folders made obsolete by a completed swap and ``.tmp-*`` folders of dead writers, and
logs what it did.

Inputs are checked against their lineage before use (:func:`verify_files`): sizes always, SHA-256
of every file by default; ``REIDFLOW_VERIFY_INPUTS=size`` skips the hashing for large local inputs.
A child records the digest of the files it actually read, and the record digest of each parent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reidflow.errors import ArtifactError, ConfigError
from reidflow.store.digests import combined_digest, file_sha256, tree_digests
from reidflow.store.lineage import (
    LINEAGE_FILE,
    METRICS_FILE,
    InputRef,
    RunContext,
    build_record,
    now_iso,
    record_digest,
)
from reidflow.store.locks import holder_alive, this_host
from reidflow.store.paths import check_record, inside
from reidflow.store.uri import URI, parse_uri

log = logging.getLogger(__name__)
VERIFY_ENV = "REIDFLOW_VERIFY_INPUTS"
RAW_INPUTS_FILE = "raw_inputs.json"
_SIDE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})-(?P<host>.+)$")


@dataclass
class ArtifactWriter:
    """Handle given to a stage while it writes: ``path`` is where the payload goes."""

    path: Path
    uri: URI
    metrics: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    # wall time, throughput: recorded in lineage.json (runtime.timing), never in the hashed payload, so
    # a bit-identical rerun makes a byte-identical artifact and its downstream stays cached
    timing: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputArtifact:
    """A resolved input: where its files are locally and the digest recorded in lineage."""

    name: str
    uri: str
    path: Path
    digest: str
    lineage: dict[str, Any] | None
    record_digest: str | None = None  # of ``lineage`` as read (what a child pins)
    raw_files: dict[str, str] | None = None  # raw data: digest of every file as read

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
        return InputRef(self.name, self.uri, self.digest, extra, self.record_digest)


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
    target = check_output(uri)
    if target.is_s3:  # built locally, uploaded on success (lineage.json last)
        tmp = Path(tempfile.mkdtemp(prefix="reidflow-s3-out-"))
    else:
        dest = target.local_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _side_path(dest, "tmp")
        tmp.mkdir()
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
            check_output(target.raw)  # again: something may have appeared there while the stage ran
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
    raw = {i.name: i.raw_files for i in inputs if i.raw_files is not None}
    if raw:  # so that `lineage verify` can name the raw file that changed
        (root / RAW_INPUTS_FILE).write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n")
    files = tree_digests(root, exclude=frozenset({LINEAGE_FILE}))
    sizes = {rel: (root / rel).stat().st_size for rel in files}
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
        sizes=sizes,
        timing=writer.timing,
    )
    (root / LINEAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return record


def _side_path(dest: Path, kind: str) -> Path:
    """``.<name>.<kind>-<pid>-<rand>-<host>`` beside ``dest``: names its writer for :func:`settle`."""
    return dest.with_name(f".{dest.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{this_host()}")


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest``; an old ``dest`` is moved aside first and removed after the swap."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = _side_path(dest, "old")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def settle(dest: Path) -> list[str]:
    """Finish or undo what dead writers left beside ``dest`` (see the module docstring).

    Returns one line per action (also logged); folders of writers that may still run are left alone.
    """
    if not dest.parent.is_dir():
        return []
    actions: list[str] = []
    sides: list[tuple[str, bool, Path]] = []
    for path in dest.parent.iterdir():
        match = _SIDE.match(path.name)
        if match and match["name"] == dest.name:
            alive = holder_alive(int(match["pid"]), match["host"])
            sides.append((match["kind"], alive, path))
    olds = sorted((p for kind, alive, p in sides if kind == "old" and not alive), key=_mtime, reverse=True)
    if not (dest.exists() or dest.is_symlink()):
        for old in olds:
            if (old / LINEAGE_FILE).is_file():
                os.replace(old, dest)
                actions.append(
                    f"{dest}: restored the previous artifact from {old.name} (a replace was interrupted)"
                )
                olds.remove(old)
                break
    if dest.exists():
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
            actions.append(f"{dest}: removed {old.name} (left by an interrupted replace that had completed)")
    for kind, alive, path in sides:
        if kind == "tmp" and not alive:
            shutil.rmtree(path, ignore_errors=True)
            actions.append(f"{dest}: removed {path.name} (an unfinished write of a run that is gone)")
    for line in actions:
        log.warning("%s", line)
    return actions


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def check_output(uri: str | Path) -> URI:
    """Validate ``--output`` before any work: a well-formed URI whose current content, if any, is a
    reidflow artifact (a valid ``lineage.json``) or an empty directory. Anything else is refused."""
    text = str(uri)
    if not text.strip():
        raise ConfigError("--output '': expected a local path or s3://bucket/prefix")
    target = parse_uri(text)
    if target.is_s3:
        from reidflow.store.s3_artifacts import check_replaceable

        check_replaceable(target)
        return target
    dest = target.local_path
    settle(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ArtifactError(f"--output {dest}: exists and is not a directory; refusing to replace it")
    if dest.is_dir() and any(dest.iterdir()):
        if not (dest / LINEAGE_FILE).is_file():
            raise ArtifactError(
                f"--output {dest}: exists and is not a reidflow artifact (no {LINEAGE_FILE}); refusing to "
                "replace it (choose another --output or remove it yourself)"
            )
        try:
            read_lineage(dest)
        except ArtifactError as exc:
            raise ArtifactError(f"--output {dest}: refusing to replace: {exc}") from None
    return target


def read_lineage(path: Path) -> dict[str, Any]:
    lineage_file = path / LINEAGE_FILE
    try:
        record = json.loads(lineage_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not a complete artifact (no {LINEAGE_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{lineage_file}: not valid JSON ({exc})") from None
    return check_record(record, str(lineage_file))


def verify_mode() -> str:
    """``hash`` (default: every input file re-hashed before use) or ``size`` (sizes only)."""
    mode = os.environ.get(VERIFY_ENV, "hash").strip().lower() or "hash"
    if mode not in ("hash", "size"):
        raise ConfigError(f"{VERIFY_ENV}={mode!r}: expected 'hash' (default) or 'size'")
    return mode


def verify_files(root: Path, record: dict[str, Any], where: str, hashes: bool) -> str:
    """Check the files of an artifact at ``root`` against its (checked) record; return the digest of
    what is there: recomputed from the files when ``hashes``, else the recorded one after the sizes
    matched. Errors name the file."""
    files: dict[str, str] = record["artifact"]["files"]
    sizes: dict[str, int] = record["artifact"].get("sizes") or {}
    lineage_where = f"{where}/{LINEAGE_FILE}"
    for rel in sorted(files):
        path = inside(root, rel, lineage_where)
        if not path.is_file():
            raise ArtifactError(f"{where}: file {rel} listed in {LINEAGE_FILE} is missing")
        if rel in sizes and path.stat().st_size != sizes[rel]:
            raise ArtifactError(
                f"{where}: file {rel} changed: {path.stat().st_size} bytes, lineage recorded {sizes[rel]}"
            )
    if combined_digest(files) != record["artifact"]["digest"]:
        raise ArtifactError(f"{where}: artifact digest does not match its file list in {LINEAGE_FILE}")
    if not hashes:
        return record["artifact"]["digest"]
    actual = {}
    for rel, digest in sorted(files.items()):
        got = file_sha256(root / rel)
        if got != digest:
            raise ArtifactError(f"{where}: file {rel} changed: sha256 {got}, lineage recorded {digest}")
        actual[rel] = got
    return combined_digest(actual)


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
    trusting the local cache and always re-hashes (used by ``lineage verify``). An artifact's files
    are checked against its lineage before use (module docstring); the digest returned is the one of
    the files as read, and a child records it.
    """
    parsed = parse_uri(uri)
    if parsed.is_s3:
        from reidflow.store.s3_artifacts import s3_open_input

        return s3_open_input(name, parsed, fresh=fresh)
    path = parsed.local_path
    settle(path)
    if not path.exists():
        raise ArtifactError(f"input {name!r}: {path} does not exist")
    if (path / LINEAGE_FILE).is_file():
        record = read_lineage(path)
        digest = verify_files(path, record, str(uri), hashes=fresh or verify_mode() == "hash")
        return InputArtifact(name, str(uri), path, digest, record, record_digest(record))
    if require_artifact:
        raise ArtifactError(
            f"input {name!r}: {path} is not a complete artifact (no {LINEAGE_FILE}); "
            "was the stage that writes it interrupted?"
        )
    files = tree_digests(path) if path.is_dir() else {path.name: file_sha256(path)}
    return InputArtifact(name, str(uri), path, combined_digest(files), None, None, files)


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
    from reidflow.config import safe_yaml

    try:
        doc = safe_yaml(dvc_file.read_bytes(), str(dvc_file)) or {}
        outs = doc.get("outs") or []
        return str(outs[0]["md5"]) if outs and "md5" in outs[0] else None
    except (OSError, ConfigError, KeyError, IndexError, TypeError, AttributeError):
        return None
