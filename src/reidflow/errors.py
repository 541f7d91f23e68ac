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
