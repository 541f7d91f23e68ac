"""S3 (and S3-compatible: MinIO, Ceph, moto) object access through boto3.

Endpoint, region and credentials come from the standard AWS environment/config (``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, the credential chain). Path-style
addressing is used whenever a custom endpoint is set, as S3-compatible stores expect. Transient errors
are retried with backoff by botocore's standard retry mode (``REIDFLOW_S3_MAX_ATTEMPTS``, default 8);
large files go multipart.

Every boto3/botocore error leaves this module as one :class:`ArtifactError` line naming the
``s3://`` URI and what failed (endpoint unreachable, missing bucket, access denied...), scrubbed of
credentials, never as a botocore traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from reidflow.errors import ArtifactError
from reidflow.store.scrub import scrub_text

MULTIPART_THRESHOLD = 64 * 2**20


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``) with no trailing slash on the key."""
    if not uri.startswith("s3://"):
        raise ArtifactError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def describe_error(exc: BaseException) -> str:
    """One scrubbed line saying what went wrong in a boto3/botocore call."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        error = response["Error"]
        code = str(error.get("Code", "?"))
        known = {
            "NoSuchBucket": "the bucket does not exist",
            "404": "not found",
            "NoSuchKey": "no such key",
            "AccessDenied": "access denied",
            "403": "access denied",
            "InvalidAccessKeyId": "the access key is not valid",
            "SignatureDoesNotMatch": "the secret key does not match",
        }
        text = known.get(code) or f"{code}: {error.get('Message') or ''}".rstrip(": ")
    else:
        name = type(exc).__name__
        text = {
            "EndpointConnectionError": "cannot reach the S3 endpoint",
            "ConnectTimeoutError": "timed out connecting to the S3 endpoint",
            "ReadTimeoutError": "timed out reading from the S3 endpoint",
            "NoCredentialsError": "no AWS credentials found (environment, profile or IAM role)",
        }.get(name, f"{name}: {exc}")
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
            endpoint = getattr(exc, "kwargs", {}).get("endpoint_url")
            text += f" {endpoint}" if endpoint else ""
    return scrub_text(" ".join(str(text).split()))


@contextlib.contextmanager
def errors_as_artifact_errors(what: str, uri: str) -> Iterator[None]:
    """Turn boto3/botocore errors inside the block into one ArtifactError line naming ``uri``."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        cause = exc
        while cause.__cause__ is not None and isinstance(cause.__cause__, (BotoCoreError, ClientError)):
            cause = cause.__cause__
        inner = getattr(exc, "last_exception", None) or cause
        raise ArtifactError(f"{scrub_text(uri)}: {what} failed: {describe_error(inner)}") from None


def _max_attempts() -> int:
    try:
        return max(1, int(os.environ.get("REIDFLOW_S3_MAX_ATTEMPTS", "8")))
    except ValueError:
        return 8


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, region: str | None, attempts: int = 8):
    import boto3
    from botocore.config import Config

    for name in ("botocore", "boto3", "s3transfer"):  # their INFO lines are not ours to print
        logging.getLogger(name).setLevel(logging.WARNING)
    config = Config(
        retries={"max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint else "auto"},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def client():
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return _client(endpoint, region, _max_attempts())


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4
    )


def list_keys(bucket: str, prefix: str) -> Iterator[str]:
    norm = prefix.rstrip("/") + "/" if prefix else ""
    with errors_as_artifact_errors("listing", s3_uri(bucket, norm)):
        paginator = client().get_paginator("list_objects_v2")
        keys = [
            obj["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=norm)
            for obj in page.get("Contents", [])
        ]
    yield from keys


def exists(bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    with errors_as_artifact_errors("reading", s3_uri(bucket, key)):
        try:
            client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise


def upload_file(path: Path, bucket: str, key: str) -> None:
    with errors_as_artifact_errors("upload", s3_uri(bucket, key)):
        client().upload_file(str(path), bucket, key, Config=_transfer_config())


def download_file(bucket: str, key: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")  # concurrent readers
    try:
        with errors_as_artifact_errors("download", s3_uri(bucket, key)):
            client().download_file(bucket, key, str(tmp), Config=_transfer_config())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def get_bytes(bucket: str, key: str) -> bytes:
    with errors_as_artifact_errors("reading", s3_uri(bucket, key)):
        return client().get_object(Bucket=bucket, Key=key)["Body"].read()


def put_bytes(bucket: str, key: str, data: bytes) -> None:
    with errors_as_artifact_errors("upload", s3_uri(bucket, key)):
        client().put_object(Bucket=bucket, Key=key, Body=data)


def read_range(bucket: str, key: str, offset: int, size: int) -> bytes:
    """Bytes ``[offset, offset + size)`` of an object (one ranged GET)."""
    if size <= 0:
        return b""
    with errors_as_artifact_errors("reading", s3_uri(bucket, key)):
        obj = client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")
        data = obj["Body"].read()
    if len(data) != size:
        raise ArtifactError(f"s3://{bucket}/{key}: short read at {offset} ({len(data)} of {size} bytes)")
    return data


def open_stream(bucket: str, key: str) -> BinaryIO:
    """A streaming, file-like body (for WebDataset: hand the stream to the tar reader)."""
    with errors_as_artifact_errors("reading", s3_uri(bucket, key)):
        return client().get_object(Bucket=bucket, Key=key)["Body"]


def delete_keys(bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        if batch:
            with errors_as_artifact_errors("deleting", s3_uri(bucket, batch[0])):
                client().delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )


def abort_multipart_uploads(bucket: str, prefix: str) -> list[str]:
    """Abort every unfinished multipart upload under ``prefix``; returns their keys."""
    norm = prefix.rstrip("/") + "/" if prefix else ""
    aborted = []
    with errors_as_artifact_errors("aborting unfinished uploads under", s3_uri(bucket, norm)):
        paginator = client().get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=norm):
            for upload in page.get("Uploads", []):
                client().abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(upload["Key"])
    return aborted
