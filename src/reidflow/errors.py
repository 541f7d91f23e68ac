"""Errors a user can act on.

Every error raised for bad input derives from :class:`ReidflowError`; the CLI prints its message
(which names the file, key or parameter and what was expected) and exits with status 2 instead of
showing a traceback.
"""

from __future__ import annotations

from pathlib import Path


class ReidflowError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(ReidflowError):
    """A params file, a ``--set`` override or a stage argument is invalid."""


class DatasetLayoutError(ReidflowError):
    """A dataset folder does not have the published layout a reader expects."""

    def __init__(self, path: str | Path, expected: str, found: str | None = None) -> None:
        self.path = str(path)
        self.expected = expected
        self.found = found
        message = f"{self.path}: expected {expected}"
        if found:
            message += f"; found {found}"
        super().__init__(message)


class DataError(ReidflowError):
    """An input file (image, shard, index) is corrupt, unreadable or inconsistent."""


class ArtifactError(ReidflowError):
    """An artifact directory is missing, incomplete or fails verification."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line for the CLI.

    An error re-raised by a DataLoader worker carries the worker's traceback in its message
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."); only the original
    error's own message is kept.
    """
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and not last.startswith(" ") else last
    return " ".join(text.split())
