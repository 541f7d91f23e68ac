"""Byte access to shard files: streaming opens and (offset, size) range reads.

Samplers read single tar members by byte range, so the hot path is one ``os.pread`` on a file
descriptor kept open between calls. Descriptors are per process: a forked DataLoader worker notices
the new pid and opens its own, so no file offset or descriptor is ever shared across processes.
An S3-backed opener plugs in later through the same :class:`Opener` protocol.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from reidflow.errors import DataError


@runtime_checkable
class Opener(Protocol):
    """Where shard bytes come from; paths are relative to the opener's root."""

    def open(self, relpath: str) -> BinaryIO:
        """A binary stream of the whole file (caller closes it)."""
        ...

    def read_range(self, relpath: str, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes starting at ``offset``."""
        ...


class LocalOpener:
    """Reads files under ``root`` with a small per-process cache of open descriptors."""

    def __init__(self, root: str | Path, max_open: int = 32) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: expected a directory holding shards, found none")
        if max_open < 1:
            raise ValueError(f"LocalOpener.max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"LocalOpener({str(self.root)!r})"

    def resolve(self, relpath: str) -> Path:
        """Absolute path of ``relpath``; refuses paths that escape the root."""
        path = (self.root / relpath).resolve()
        if path != self.root and self.root not in path.parents:
            raise DataError(f"{relpath}: expected a path inside {self.root}")
        return path

    def open(self, relpath: str) -> BinaryIO:
        path = self.resolve(relpath)
        try:
            return open(path, "rb")
        except OSError as exc:
            raise DataError(f"{path}: cannot open ({exc.strerror})") from exc

    def read_range(self, relpath: str, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise DataError(f"{relpath}: invalid byte range offset={offset} size={size}")
        fd = self._descriptor(relpath)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise DataError(
                f"{self.resolve(relpath)}: expected {size} bytes at offset {offset}, "
                f"got {len(data)} (file truncated or index stale)"
            )
        return data

    def reopen(self) -> None:
        """Forget descriptors inherited from another process (call in a new worker)."""
        if os.getpid() != self._pid:
            # The inherited descriptors are this process's copies; closing them does not affect
            # the parent.
            self._close_all()
            self._pid = os.getpid()

    def close(self) -> None:
        self._close_all()

    def _descriptor(self, relpath: str) -> int:
        self.reopen()
        fd = self._fds.get(relpath)
        if fd is not None:
            self._fds.move_to_end(relpath)
            return fd
        path = self.resolve(relpath)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise DataError(f"{path}: cannot open ({exc.strerror})") from exc
        self._fds[relpath] = fd
        while len(self._fds) > self.max_open:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def _close_all(self) -> None:
        while self._fds:
            _, fd = self._fds.popitem()
            try:
                os.close(fd)
            except OSError:
                pass

    def __getstate__(self) -> dict:
        # Descriptors are meaningless in another process (spawn start method, pickling).
        state = self.__dict__.copy()
        state["_fds"] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            self._close_all()
