"""Artifact URIs: a local path or ``s3://bucket/prefix``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from reidflow.errors import ConfigError
from reidflow.store.scrub import scrub_text

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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
    """Check an artifact URI before any work: a local path, ``file://`` path or ``s3://bucket/prefix``.

    Refused (one-line :class:`ConfigError`): empty text, control characters, other schemes
    (``http://x/y`` would otherwise become a local folder ``http:/x/y``), credentials in the URI
    (use the AWS credential chain), invalid bucket names and ``.``/``..``/empty parts in an S3 key.
    """
    text = str(raw).strip()
    if not text:
        raise ConfigError("empty artifact URI: expected a local path or s3://bucket/prefix")
    shown = scrub_text(text)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(f"{shown!r}: control characters in an artifact URI")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text) and not text.startswith(("s3://", "file://")):
        scheme = text.split(":", 1)[0]
        raise ConfigError(
            f"{shown}: unsupported URI scheme {scheme!r} (expected a local path or s3://bucket/prefix)"
        )
    if text.startswith("s3://"):
        _check_s3(text, shown)
    elif text.startswith("file://") and not text.removeprefix("file://"):
        raise ConfigError(f"{shown}: expected file://PATH")
    return URI(text)


def _check_s3(text: str, shown: str) -> None:
    bucket, _, key = text[5:].partition("/")
    if "@" in bucket:
        raise ConfigError(
            f"{shown}: credentials in an s3:// URI are not accepted; use the AWS credential chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an IAM role)"
        )
    if not _BUCKET.match(bucket):
        raise ConfigError(
            f"{shown}: expected s3://BUCKET/prefix with a bucket name of 3-63 lowercase letters, "
            "digits, dots or hyphens"
        )
    parts = key.rstrip("/").split("/") if key.rstrip("/") else []
    if any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ConfigError(f"{shown}: the S3 prefix must not contain empty, '.' or '..' parts")
