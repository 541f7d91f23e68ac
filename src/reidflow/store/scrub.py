"""The one scrubbing function: everything reidflow writes or prints that may hold a URI goes through
:func:`scrub` (lineage, ``model.json``, checkpoint directory names, error messages, botocore's
messages, metrics labels).

Removed: credentials in URL user-info (``s3://user:pw@bucket``, ``https://u:p@host``), signed-URL
query strings (``X-Amz-*``, ``Signature=``, ``sig=``, ``token=``...), bearer tokens, the values of
the AWS credential variables of this process wherever they appear, and the values of mapping keys
that look like credentials (``password``, ``secret_key``, ``token``...).
"""

from __future__ import annotations

import os
import re
from typing import Any

_SECRET_KEY = re.compile(
    r"(secret|password|passwd|token|credential|access[_-]?key|private[_-]?key|session|signature|authorization)",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s\"']+@", re.IGNORECASE)
_SIGNED_QUERY = re.compile(
    r"\?[^\s\"'#]*(X-Amz-|X-Goog-|Signature=|AWSAccessKeyId=|sig=|se=|token=|access_token=|Expires=)"
    r"[^\s\"'#]*",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(bearer|token)(\s*[:=]?\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "REIDFLOW_SECRET")
MASK = "***"


def scrub_text(text: str) -> str:
    """``text`` with credentials, signed queries, tokens and this process's AWS secrets masked."""
    text = _URL_USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    text = _SIGNED_QUERY.sub(f"?{MASK}", text)
    text = _BEARER.sub(rf"\1\2{MASK}", text)
    for name in _ENV_SECRETS:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub(value: Any) -> Any:
    """A copy of ``value`` (str, or dicts/lists/tuples of them) with anything credential-like masked."""
    if isinstance(value, dict):
        return {
            k: (MASK if _SECRET_KEY.search(str(k)) and v not in (None, "", False) else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)
    if isinstance(value, str):
        return scrub_text(value)
    return value
