"""Artifacts in a real S3-compatible server (moto) on 127.0.0.1."""

import json

import pytest

from reidflow.errors import ArtifactError
from reidflow.store import s3
from reidflow.store.ancestry import verify
from reidflow.store.artifacts import open_input, write_artifact
from reidflow.store.lineage import RunContext

pytestmark = pytest.mark.integration


def publish(uri, payload, inputs=()):
    with write_artifact(
        uri,
        kind="test",
        stage="unit",
        params={"endpoint": "x"},
        params_digest="sha256:p",
        seed=0,
        inputs=list(inputs),
        ctx=RunContext(),
    ) as art:
        for rel, data in payload.items():
            (art.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (art.path / rel).write_bytes(data)
    return uri


def test_write_read_verify_roundtrip(s3_env, tmp_path):
    bucket = s3_env["BUCKET"]
    a = publish(f"s3://{bucket}/runs/a", {"x.bin": b"abc" * 1000, "d/y.txt": b"y"})
    got = open_input("shards", a)
    assert (got.path / "x.bin").read_bytes() == b"abc" * 1000
    b = publish(f"s3://{bucket}/runs/b", {"m.bin": b"model"}, inputs=[got])
    assert verify(b) == [b, a]
    assert s3.read_range(bucket, "runs/a/x.bin", 3, 4) == b"abca"
    assert s3.open_stream(bucket, "runs/a/d/y.txt").read() == b"y"
    # tamper with a parent object in the bucket: the child's verify names it
    s3.put_bytes(bucket, "runs/a/x.bin", b"abd" * 1000)
    with pytest.raises(ArtifactError, match="x.bin"):
        verify(b)


def test_failed_stage_leaves_no_complete_artifact_and_overwrite_drops_stale_keys(s3_env):
    bucket = s3_env["BUCKET"]
    uri = publish(f"s3://{bucket}/p/a", {"old.bin": b"1", "keep.bin": b"2"})
    with (
        pytest.raises(RuntimeError),
        write_artifact(uri, kind="t", stage="s", params={}, params_digest="d", seed=None, inputs=[]) as art,
    ):
        (art.path / "new.bin").write_bytes(b"3")
        raise RuntimeError("boom")
    assert sorted(s3.list_keys(bucket, "p/a")) == ["p/a/keep.bin", "p/a/lineage.json", "p/a/old.bin"]
    publish(uri, {"keep.bin": b"22"})
    assert sorted(s3.list_keys(bucket, "p/a")) == ["p/a/keep.bin", "p/a/lineage.json"]
    with pytest.raises(ArtifactError, match="not a complete artifact"):
        open_input("x", f"s3://{bucket}/p/missing")


def test_no_secret_in_lineage(s3_env):
    bucket = s3_env["BUCKET"]
    uri = publish(f"s3://{bucket}/sec", {"a": b"1"})
    text = s3.get_bytes(bucket, "sec/lineage.json").decode()
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in text and s3_env["AWS_ACCESS_KEY_ID"] not in text
    assert json.loads(text)["artifact"]["uri"] == uri
