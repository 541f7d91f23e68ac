"""Training checkpoints kept in the artifact store, so a retried (or evicted) pod resumes.

The engine writes checkpoints to a local directory (``<section>.checkpoint_dir``, default beside the
output or under ``/tmp`` for an S3 output): in a pod that directory dies with the pod. While a
training task runs, :class:`CheckpointSync` copies each new complete checkpoint to the task's
checkpoint store and then moves the store's ``latest`` marker to it; a new attempt of the task first
restores the store's latest checkpoint into the local directory and trains with ``resume``.

The store is ``<output>.ckpt``: beside the task's S3 output (``<artifact_root>/<run>/<task>[/<item>]``,
the same for every attempt of a task in a run), else beside the KFP artifact's URI (the pipeline
root; on a cluster the backend's per-execution output URI). Once the model artifact is published the
store is deleted. Imported inside component bodies: reidflow and the standard library only.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Self

from reidflow.errors import ArtifactError

log = logging.getLogger(__name__)
SYNC_ENV = "REIDFLOW_CHECKPOINT_SYNC_S"
"""Seconds between uploads; ``0`` switches the store off (set by the pipeline from ``kfp.checkpoints``)."""
LATEST = "latest"
DEFAULT_INTERVAL_S = 30.0


class CheckpointStore:
    """``s3://bucket/prefix`` or a local directory holding ``<ckpt-name>/<files>`` and ``latest``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.is_s3 = self.uri.startswith("s3://")

    def _split(self, rel: str = "") -> tuple[str, str]:
        from reidflow.store import s3

        bucket, prefix = s3.split_s3(self.uri)
        return bucket, f"{prefix}/{rel}" if rel else prefix

    def latest(self) -> str | None:
        """Name of the newest complete checkpoint in the store, or None."""
        if self.is_s3:
            from reidflow.store import s3

            bucket, key = self._split(LATEST)
            text = s3.get_bytes(bucket, key).decode() if s3.exists(bucket, key) else ""
        else:
            marker = Path(self.uri) / LATEST
            text = marker.read_text() if marker.is_file() else ""
        return text.strip() or None

    def upload(self, checkpoint: Path) -> None:
        """Copy one complete local checkpoint directory, then point ``latest`` at it, then drop the
        older ones (a pod killed mid-upload leaves the previous checkpoint valid)."""
        files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
        if self.is_s3:
            from reidflow.store import s3

            for path in files:
                s3.upload_file(path, *self._split(f"{checkpoint.name}/{path.relative_to(checkpoint)}"))
            s3.put_bytes(*self._split(LATEST), (checkpoint.name + "\n").encode())
            bucket, prefix = self._split()
            stale = [
                k
                for k in s3.list_keys(bucket, prefix)
                if k != f"{prefix}/{LATEST}" and not k.startswith(f"{prefix}/{checkpoint.name}/")
            ]
            s3.delete_keys(bucket, stale)
            return
        root = Path(self.uri)
        tmp = root / f".incoming-{checkpoint.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp)
        shutil.rmtree(root / checkpoint.name, ignore_errors=True)
        tmp.rename(root / checkpoint.name)
        marker = root / f".{LATEST}.tmp"
        marker.write_text(checkpoint.name + "\n")
        os.replace(marker, root / LATEST)
        for old in root.iterdir():
            if old.is_dir() and old.name != checkpoint.name:
                shutil.rmtree(old, ignore_errors=True)

    def download(self, name: str, local_root: Path) -> Path:
        """Restore checkpoint ``name`` into ``local_root`` (as the engine lays it out, ``latest`` included)."""
        dest = local_root / name
        shutil.rmtree(dest, ignore_errors=True)
        if self.is_s3:
            from reidflow.store import s3

            bucket, prefix = self._split(name)
            keys = list(s3.list_keys(bucket, prefix))
            if not keys:
                raise ArtifactError(f"{self.uri}/{name}: named by {LATEST} but empty")
            for key in keys:
                s3.download_file(bucket, key, dest / key[len(prefix) + 1 :])
        else:
            shutil.copytree(Path(self.uri) / name, dest)
        (local_root / LATEST).write_text(name + "\n")
        return dest

    def clear(self) -> None:
        if self.is_s3:
            from reidflow.store import s3

            bucket, prefix = self._split()
            s3.delete_keys(bucket, list(s3.list_keys(bucket, prefix)))
        else:
            shutil.rmtree(self.uri, ignore_errors=True)


def local_latest(local_root: Path) -> Path | None:
    """The local checkpoint ``latest`` names, if it is complete."""
    marker = local_root / LATEST
    if not marker.is_file():
        return None
    path = local_root / marker.read_text().strip()
    return path if (path / "state.json").is_file() else None


class CheckpointSync:
    """Restore from the store before training; upload new checkpoints while training (a thread)."""

    def __init__(self, store: CheckpointStore, local_root: Path, interval_s: float = DEFAULT_INTERVAL_S):
        self.store, self.local_root, self.interval_s = store, Path(local_root), interval_s
        self.uploaded: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> str | None:
        """Bring the store's latest checkpoint here unless this pod already has one; returns its name."""
        here = local_latest(self.local_root)
        if here is not None:
            return here.name
        name = self.store.latest()
        if name is None:
            return None
        self.store.download(name, self.local_root)
        self.uploaded = name
        log.info("checkpoints: restored %s from %s; training resumes there", name, self.store.uri)
        print(f"reidflow: resuming from checkpoint {name} restored from {self.store.uri}", flush=True)
        return name

    def sync_once(self) -> bool:
        """Upload the newest local checkpoint if it is new; True when something was uploaded."""
        try:
            latest = local_latest(self.local_root)
            if latest is None or latest.name == self.uploaded:
                return False
            self.store.upload(latest)
            self.uploaded = latest.name
            return True
        except (OSError, ArtifactError) as exc:  # pruned while copying, S3 hiccup: next round
            log.warning("checkpoints: upload to %s failed (%s); retrying later", self.store.uri, exc)
            return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sync_once()

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._loop, name="reidflow-ckpt-sync", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def store_uri_for(output: str, artifact: Any) -> str | None:
    """The checkpoint store of a task writing ``output``: ``<output>.ckpt`` on S3, else beside the KFP
    artifact's URI (s3://, KFP's minio:// as s3://, or the local pipeline root); None otherwise."""
    from components.runtime import readable_uri
    from reidflow.errors import ConfigError

    if output.startswith("s3://"):
        return output.rstrip("/") + ".ckpt"
    uri = getattr(artifact, "uri", "") or ""
    if not uri:
        return None
    try:
        return readable_uri(uri).rstrip("/") + ".ckpt"
    except ConfigError:  # gs:// and friends: no store the stages can write
        return None


def for_task(configured_dir: str | None, output: str, artifact: Any) -> CheckpointSync | None:
    """The sync of a training task, or None when the store is off (``REIDFLOW_CHECKPOINT_SYNC_S=0``),
    there is no store, or the local checkpoint directory already is the store (local runs)."""
    from reidflow.stages.trained_model import checkpoint_dir

    interval = float(os.environ.get(SYNC_ENV, str(DEFAULT_INTERVAL_S)) or 0)
    store = store_uri_for(output, artifact)
    if interval <= 0 or store is None:
        return None
    local = checkpoint_dir(configured_dir, output)
    if not store.startswith("s3://") and Path(store).resolve() == local.resolve():
        return None
    return CheckpointSync(CheckpointStore(store), local, interval)
