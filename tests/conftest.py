"""Shared fixtures: a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[dict[str, str]]:
    """Environment pointing boto3 at the moto server, with a fresh bucket; yields the env values."""
    import uuid

    from reidflow.store import s3

    env = {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "AKIATESTREIDFLOW0001",
        "AWS_SECRET_ACCESS_KEY": "reidflowTestSecretKeyDoNotLeak0123456789",
        "AWS_DEFAULT_REGION": "us-east-1",
        "REIDFLOW_CACHE_DIR": str(tmp_path / "s3cache"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3._client.cache_clear()
    bucket = f"reidflow-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    env["BUCKET"] = bucket
    yield env
    s3._client.cache_clear()


def in_ci() -> bool:
    """True under CI: the ``CI`` variable CI services set, unless empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[str]:
    """Debian's prometheus-pushgateway on 127.0.0.1 (installed by .ci/system-deps)."""
    import shutil
    import subprocess
    import time
    import urllib.request

    exe = shutil.which("prometheus-pushgateway")
    if exe is None:
        missing = "prometheus-pushgateway is not installed: run .ci/system-deps (apt-get install prometheus-pushgateway)"
        if in_ci():
            pytest.fail(missing)
        pytest.skip(missing + "; skipped outside CI (set CI=true to make this a failure)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("prometheus-pushgateway did not become ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
