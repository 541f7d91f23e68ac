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


# ------------------------------------------------------------------------------------------------
# issue 16: traversal, outages, replacing, errors


def _rewrite_record(bucket, prefix, edit):
    record = json.loads(s3.get_bytes(bucket, f"{prefix}/lineage.json"))
    edit(record)
    s3.put_bytes(bucket, f"{prefix}/lineage.json", json.dumps(record).encode())


@pytest.mark.parametrize("key", ["../../escaped.bin", "/abs/escaped.bin", "a/../../../escaped.bin"])
def test_file_keys_from_an_s3_record_never_leave_the_cache(s3_env, tmp_path, key):
    bucket = s3_env["BUCKET"]
    uri = publish(f"s3://{bucket}/trav", {"x.bin": b"abc"})
    s3.put_bytes(bucket, "escaped.bin", b"evil")
    s3.put_bytes(bucket, "trav/" + key.lstrip("/"), b"evil")

    def add(record):
        record["artifact"]["files"][key] = record["artifact"]["files"]["x.bin"]

    _rewrite_record(bucket, "trav", add)
    for call in (lambda: open_input("m", uri), lambda: verify(uri)):
        with pytest.raises(ArtifactError, match="not a relative, normalized path"):
            call()
    assert not [p for p in tmp_path.rglob("escaped.bin")]


def test_forged_digest_cannot_steer_the_cache_path(s3_env, tmp_path):
    bucket = s3_env["BUCKET"]
    uri = publish(f"s3://{bucket}/dig", {"x.bin": b"abc"})
    _rewrite_record(bucket, "dig", lambda r: r["artifact"].update(digest="../../../outside"))
    with pytest.raises(ArtifactError, match="is not a digest"):
        open_input("m", uri)
    assert not (tmp_path / "outside").exists()


def test_output_prefix_that_is_not_an_artifact_is_refused(s3_env):
    bucket = s3_env["BUCKET"]
    s3.put_bytes(bucket, "datasets/market/img.jpg", b"\xff\xd8")
    with pytest.raises(ArtifactError, match="holds objects but no lineage.json"):
        publish(f"s3://{bucket}/datasets/market", {"x.bin": b"1"})
    assert list(s3.list_keys(bucket, "datasets/market")) == ["datasets/market/img.jpg"]


def test_s3_errors_are_one_line_naming_the_uri(s3_env, monkeypatch):
    from tests.conftest import free_port

    with pytest.raises(ArtifactError, match="the bucket does not exist") as err:
        publish("s3://no-such-bucket-reidflow/x", {"x.bin": b"1"})
    assert "s3://no-such-bucket-reidflow/" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setenv("REIDFLOW_S3_MAX_ATTEMPTS", "1")
    s3._client.cache_clear()
    with pytest.raises(ArtifactError, match="cannot reach the S3 endpoint") as err:
        open_input("m", f"s3://{s3_env['BUCKET']}/x")
    text = str(err.value)
    assert "\n" not in text and s3_env["AWS_SECRET_ACCESS_KEY"] not in text


def test_outage_mid_upload_keeps_the_old_artifact_and_aborts_the_multipart_upload(s3_env, monkeypatch):
    """A proxy between boto3 and moto is cut while a multipart upload of the new version runs."""
    import os

    import boto3

    from tests.integration.tcp_proxy import TcpProxy

    bucket = s3_env["BUCKET"]
    direct = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    proxy = TcpProxy(int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("REIDFLOW_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 5 * 2**20)  # S3's smallest part size
    s3._client.cache_clear()
    uri = f"s3://{bucket}/runs/model"
    old_big = os.urandom(11 * 2**20)
    publish(uri, {"big.bin": old_big, "old.txt": b"old"})
    old_record = s3.get_bytes(bucket, "runs/model/lineage.json")
    try:
        proxy.cut_after(7 * 2**20)  # the outage starts in the middle of the new big.bin
        with pytest.raises(ArtifactError, match=r"s3://.*/runs/model/big.bin: upload failed") as err:
            publish(uri, {"big.bin": os.urandom(11 * 2**20), "new.txt": b"new"})
        assert "\n" not in str(err.value) and s3_env["AWS_SECRET_ACCESS_KEY"] not in str(err.value)
        # the previous version is untouched and complete
        assert direct.get_object(Bucket=bucket, Key="runs/model/lineage.json")["Body"].read() == old_record
        assert direct.get_object(Bucket=bucket, Key="runs/model/big.bin")["Body"].read() == old_big
        # the endpoint was gone, so the failed upload could not be aborted yet
        assert [u["Key"] for u in direct.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [
            "runs/model/big.bin"
        ]
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"])
        s3._client.cache_clear()
        assert verify(uri) == [uri]
        # the endpoint is back: the next publish aborts what the outage left and completes
        proxy.start()
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3._client.cache_clear()
        publish(uri, {"big.bin": b"small now", "new.txt": b"new"})
    finally:
        proxy.stop()
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    keys = sorted(o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["runs/model/big.bin", "runs/model/lineage.json", "runs/model/new.txt"]


def test_a_retry_replaces_what_a_crashed_first_write_left(s3_env):
    """A first write that died before lineage.json (a KFP retry's situation) is not 'foreign data'."""
    from reidflow.store.s3_artifacts import WRITING_MARKER

    bucket = s3_env["BUCKET"]
    s3.put_bytes(bucket, f"retry/{WRITING_MARKER}", b"x")
    s3.put_bytes(bucket, "retry/half.bin", b"partial")
    uri = publish(f"s3://{bucket}/retry", {"full.bin": b"done"})
    assert sorted(s3.list_keys(bucket, "retry")) == ["retry/full.bin", "retry/lineage.json"]
    assert verify(uri) == [uri]
