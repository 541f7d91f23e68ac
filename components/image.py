"""The container image every component runs in, decided in ONE place.

Order: ``REIDFLOW_IMAGE`` in the environment at compile time, else ``kfp.image`` in params.yaml, else
:data:`DEFAULT_IMAGE`. Pin it by digest (``ghcr.io/reidflow/reidflow@sha256:...``): KFP's cache key
uses the image *string*, so with a moving tag a rebuilt image would silently reuse results computed
by the old code, while a digest changes exactly when the image content changes.
"""

from __future__ import annotations

import os
import re
from typing import Any

from reidflow.errors import ConfigError

ENV_VAR = "REIDFLOW_IMAGE"
DEFAULT_IMAGE = "ghcr.io/reidflow/reidflow:0.1.0"

_REFERENCE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def validate_image(reference: str, origin: str = "image") -> str:
    """Return ``reference`` if it is a well-formed image reference with a tag or a digest."""
    ref = reference.strip()
    match = _REFERENCE.match(ref)
    if not match:
        raise ConfigError(
            f"{origin}: {reference!r} is not an image reference "
            "(expected registry/name:tag or registry/name@sha256:<64 hex>)"
        )
    if not match.group("tag") and not match.group("digest"):
        raise ConfigError(
            f"{origin}: {reference!r} has neither a tag nor a digest; "
            "pin it (…@sha256:…) so KFP caching and lineage mean something"
        )
    return ref


def image_digest(reference: str) -> str | None:
    """``sha256:…`` if the reference is pinned by digest, else None."""
    match = _REFERENCE.match(reference.strip())
    return match.group("digest") if match else None


def resolve_image(params: dict[str, Any] | None = None) -> str:
    """The image for this compile: env, then ``kfp.image`` of ``params``, then the default."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return validate_image(env, origin=f"${ENV_VAR}")
    configured = ((params or {}).get("kfp") or {}).get("image")
    if configured:
        return validate_image(str(configured), origin="params.yaml: kfp.image")
    return DEFAULT_IMAGE


IMAGE = resolve_image()
"""The image resolved from the environment at import; the pipeline builder re-resolves with params."""
