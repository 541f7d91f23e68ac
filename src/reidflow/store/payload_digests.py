"""Content digests of local artifacts, without their run facts: what a pipeline stage should depend on.

A stage that reruns with identical results writes an artifact whose payload files (and so
``artifact.digest``) and whose ``artifact.record_digest`` (the lineage record without when, where and
how fast it ran) are unchanged; only ``lineage.json``'s run timestamps, host and timing differ. A DVC
dependency on the whole artifact directory would still see a change there. Depending on the file
:func:`payload_digests` writes instead lets the downstream stage stay cached.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reidflow.errors import ArtifactError
from reidflow.store.lineage import LINEAGE_FILE


def find_artifacts(paths: Sequence[str | Path]) -> list[Path]:
    """Every artifact directory among ``paths`` and their immediate subdirectories (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / LINEAGE_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.iterdir() if (p / LINEAGE_FILE).is_file())
        else:
            raise ArtifactError(
                f"{path}: neither an artifact (no {LINEAGE_FILE}) nor a directory of artifacts"
            )
    return sorted(set(found))


def payload_digests(paths: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """``{artifact path: {kind, digest, record_digest}}`` of every artifact found under ``paths``."""
    out: dict[str, dict[str, Any]] = {}
    for artifact in find_artifacts(paths):
        where = artifact / LINEAGE_FILE
        try:
            record = json.loads(where.read_text())
            art = record["artifact"]
            out[str(artifact)] = {
                "kind": art["kind"],
                "digest": art["digest"],
                "record_digest": art["record_digest"],
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{where}: not a readable lineage record ({exc})") from None
    return out


def write_payload_digests(paths: Sequence[str | Path], output: str | Path) -> Path:
    """Write :func:`payload_digests` as sorted JSON to ``output`` (only when the content changes)."""
    text = json.dumps(payload_digests(paths), indent=1, sort_keys=True) + "\n"
    dest = Path(output)
    if not dest.is_file() or dest.read_text() != text:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(text)
        tmp.replace(dest)
    return dest
