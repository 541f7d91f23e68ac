"""Artifact URIs: a local path or ``s3://bucket/prefix``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reidflow.errors import ConfigError


@dataclass(frozen=True)
class URI:
    raw: str

    @property
    def is_s3(self) -> bool:
        return self.raw.startswith("s3://")

    @property
    def local_path(self) -> Path:
        if self.is_s3:
            raise ConfigError(f"{self.raw}: an s3:// URI has no local path")
        return Path(self.raw.removeprefix("file://"))

    def __str__(self) -> str:
        return self.raw


def parse_uri(raw: str | Path) -> URI:
    text = str(raw).strip()
    if not text:
        raise ConfigError("empty artifact URI: expected a local path or s3://bucket/prefix")
    if "://" in text and not text.startswith(("s3://", "file://")):
        scheme = text.split("://", 1)[0]
        raise ConfigError(
            f"{text}: unsupported URI scheme {scheme!r} (expected a local path or s3://bucket/prefix)"
        )
    if text.startswith("s3://") and len(text[5:].split("/", 1)[0]) < 3:
        raise ConfigError(f"{text}: expected s3://BUCKET/prefix with a bucket name of at least 3 characters")
    return URI(text)
