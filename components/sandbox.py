"""A component body run as if in its own pod, for local runs that must catch pod-local paths.

On a cluster every task runs in a fresh pod: its working directory, ``/tmp`` and caches are gone when
it ends, and only its declared input artifacts (and object-store URIs) reach the next task.
``kfp.local`` runs every task on one machine, where a path written by one task is still there for
the next. With ``REIDFLOW_KFP_ISOLATE=1`` (``reidflow pipeline run --local --isolated``) each body
runs in a private directory instead: working directory, ``TMPDIR`` and S3 read cache inside it, and
its output artifacts written to pod-local paths that are copied to the artifacts' URIs (the local
pipeline root: the "upload") when the body ends, after which the directory is deleted. A task that
recorded such a path and a task that reads it then fail locally as they would on a cluster.

Imported inside component bodies; standard library only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ISOLATE_ENV = "REIDFLOW_KFP_ISOLATE"
_PRIVATE_ENV = ("TMPDIR", "REIDFLOW_CACHE_DIR")


def isolated() -> bool:
    return os.environ.get(ISOLATE_ENV, "").strip() not in ("", "0", "false")


@contextmanager
def pod(*outputs: Any) -> Iterator[Path | None]:
    """Run the block in a private pod-like directory when :func:`isolated`, else as is (yields None).

    ``outputs``: the task's KFP output artifacts (their ``uri`` is kept; their ``path`` moves into
    the private directory until the block ends).
    """
    if not isolated():
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="reidflow-pod-"))
    saved_env = {name: os.environ.get(name) for name in _PRIVATE_ENV}
    saved_cwd = os.getcwd()
    for sub in ("work", "tmp", "cache", "outputs"):
        (root / sub).mkdir()
    os.environ["TMPDIR"] = str(root / "tmp")
    os.environ["REIDFLOW_CACHE_DIR"] = str(root / "cache")
    tempfile.tempdir = None  # re-read TMPDIR
    os.chdir(root / "work")
    for index, artifact in enumerate(outputs):
        artifact.custom_path = str(root / "outputs" / f"{index}-{Path(artifact.uri).name}")
    try:
        yield root
        for artifact in outputs:
            _upload(Path(artifact.path), Path(artifact.uri))
    finally:
        for artifact in outputs:
            artifact.custom_path = ""
        os.chdir(saved_cwd)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tempfile.tempdir = None
        shutil.rmtree(root, ignore_errors=True)


def _upload(local: Path, store: Path) -> None:
    """What the launcher does after the task: copy the output to the artifact's URI."""
    if local.is_dir():
        shutil.copytree(local, store, dirs_exist_ok=True)
    elif local.is_file():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, store)
