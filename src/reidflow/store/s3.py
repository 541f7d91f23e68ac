"""S3 (and S3-compatible: MinIO, Ceph, moto) object access through boto3.

Endpoint, region and credentials come from the standard AWS environment/config (``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, the credential chain). Path-style
addressing is used whenever a custom endpoint is set, as S3-compatible stores expect. Transient errors
are retried with backoff by botocore's standard retry mode; large files go multipart.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from reidflow.errors import ArtifactError

MULTIPART_THRESHOLD = 64 * 2**20


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``) with no trailing slash on the key."""
    if not uri.startswith("s3://"):
        raise ArtifactError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, region: str | None):
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 8, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint else "auto"},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def client():
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return _client(endpoint, region)


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4
    )


def list_keys(bucket: str, prefix: str) -> Iterator[str]:
    paginator = client().get_paginator("list_objects_v2")
    norm = prefix.rstrip("/") + "/" if prefix else ""
    for page in paginator.paginate(Bucket=bucket, Prefix=norm):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def exists(bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def upload_file(path: Path, bucket: str, key: str) -> None:
    client().upload_file(str(path), bucket, key, Config=_transfer_config())


def download_file(bucket: str, key: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")  # concurrent readers
    client().download_file(bucket, key, str(tmp), Config=_transfer_config())
    os.replace(tmp, path)


def get_bytes(bucket: str, key: str) -> bytes:
    return client().get_object(Bucket=bucket, Key=key)["Body"].read()


def put_bytes(bucket: str, key: str, data: bytes) -> None:
    client().put_object(Bucket=bucket, Key=key, Body=data)


def read_range(bucket: str, key: str, offset: int, size: int) -> bytes:
    """Bytes ``[offset, offset + size)`` of an object (one ranged GET)."""
    if size <= 0:
        return b""
    body = client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")["Body"]
    data = body.read()
    if len(data) != size:
        raise ArtifactError(f"s3://{bucket}/{key}: short read at {offset} ({len(data)} of {size} bytes)")
    return data


def open_stream(bucket: str, key: str) -> BinaryIO:
    """A streaming, file-like body (for WebDataset: hand the stream to the tar reader)."""
    return client().get_object(Bucket=bucket, Key=key)["Body"]


def delete_keys(bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        if batch:
            client().delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
