"""Validation of names read from untrusted records (``lineage.json``, indexes) before any I/O.

A file key of an artifact must be a relative, normalized POSIX path inside the artifact: no
absolute path, no ``..`` or ``.`` part, no empty part, no backslash, no control character. A digest
must be ``sha256:<64 hex>``. Anything else is refused with an :class:`ArtifactError` naming where
it was read, so a forged record cannot make a reader write or read outside its directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from reidflow.errors import ArtifactError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_relpath(rel: object, where: str) -> str:
    """``rel`` if it is a safe file key (see the module docstring); else an ArtifactError."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"{where}: file key {rel!r} is not a non-empty string")
    parts = rel.split("/")
    if (
        rel.startswith("/")
        or "\\" in rel
        or _CONTROL.search(rel)
        or any(p in ("", ".", "..") for p in parts)
        or re.match(r"^[A-Za-z]:", rel)
    ):
        raise ArtifactError(
            f"{where}: file key {rel!r} is not a relative, normalized path inside the artifact"
        )
    return rel


def inside(root: Path, rel: object, where: str) -> Path:
    """``root / rel`` after checking ``rel`` with :func:`safe_relpath` and that no symlink leads out."""
    path = root / safe_relpath(rel, where)
    try:
        resolved_root = root.resolve()
        resolved = path.resolve()
    except OSError as exc:
        raise ArtifactError(f"{where}: cannot resolve {rel!r} ({exc.strerror})") from None
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise ArtifactError(f"{where}: file key {rel!r} leads outside the artifact")
    return path


def check_digest(value: object, where: str) -> str:
    """``value`` if it is a ``sha256:<hex>`` digest; else an ArtifactError."""
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise ArtifactError(f"{where}: {value!r} is not a digest (expected sha256:<64 hex digits>)")
    return value


def check_record(record: object, where: str) -> dict:
    """The parts of a ``lineage.json`` a reader acts on, checked: a mapping whose ``artifact`` has a
    digest, ``files`` of safe keys to digests and, when present, ``sizes`` of the same keys."""
    if not isinstance(record, dict) or not isinstance(record.get("artifact"), dict):
        raise ArtifactError(f"{where}: not a reidflow lineage record (no 'artifact' mapping)")
    artifact = record["artifact"]
    check_digest(artifact.get("digest"), f"{where}: artifact.digest")
    files = artifact.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{where}: artifact.files is not a mapping of file keys to digests")
    for rel, digest in files.items():
        safe_relpath(rel, f"{where}: artifact.files")
        check_digest(digest, f"{where}: artifact.files[{rel!r}]")
    sizes = artifact.get("sizes")
    if sizes is not None and (
        not isinstance(sizes, dict)
        or set(sizes) != set(files)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes.values())
    ):
        raise ArtifactError(f"{where}: artifact.sizes does not list a byte count for every file")
    if not isinstance(record.get("inputs", []), list):
        raise ArtifactError(f"{where}: inputs is not a list")
    return record
