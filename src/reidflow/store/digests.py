"""Content digests of files and artifact directories."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def tree_files(root: Path, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Relative POSIX paths of every regular file under ``root``, sorted."""
    out = []
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in exclude:
                out.append(rel)
    return sorted(out)


def tree_digests(root: Path, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    return {rel: file_sha256(root / rel) for rel in tree_files(root, exclude)}


def combined_digest(files: dict[str, str]) -> str:
    """One digest over the sorted ``relpath digest`` lines, so a rename is a change too."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel} {files[rel]}\n".encode())
    return "sha256:" + h.hexdigest()
