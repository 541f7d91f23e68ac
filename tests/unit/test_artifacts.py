import json
import os
from pathlib import Path

import pytest

from reidflow.errors import ArtifactError
from reidflow.store.ancestry import load_tree, render_graph, render_text, verify
from reidflow.store.artifacts import open_input, write_artifact
from reidflow.store.lineage import SCHEMA, RunContext, scrub


def make_artifact(path: Path, payload: dict[str, bytes], inputs=(), stage="unit", seed=1) -> Path:
    with write_artifact(
        path,
        kind="test",
        stage=stage,
        params={"x": 1},
        params_digest="sha256:p",
        seed=seed,
        inputs=list(inputs),
        ctx=RunContext(orchestrator="cli"),
    ) as art:
        for rel, data in payload.items():
            (art.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (art.path / rel).write_bytes(data)
        art.metrics = {"score": 0.5}
    return path


def test_lineage_has_required_fields(tmp_path):
    out = make_artifact(tmp_path / "a", {"w.bin": b"123", "sub/c.txt": b"x"})
    rec = json.loads((out / "lineage.json").read_text())
    assert rec["schema"] == SCHEMA
    assert set(rec["artifact"]["files"]) == {"w.bin", "sub/c.txt", "metrics.json"}
    assert rec["artifact"]["digest"].startswith("sha256:")
    for key in (
        "stage",
        "params",
        "params_digest",
        "seed",
        "inputs",
        "code",
        "runtime",
        "started",
        "finished",
        "metrics",
    ):
        assert key in rec
    assert set(rec["code"]) == {"version", "git_commit", "git_dirty"}
    assert {"python", "torch", "device", "host", "image", "orchestrator", "run_id"} <= set(rec["runtime"])
    assert json.loads((out / "metrics.json").read_text()) == {"score": 0.5}


def test_failed_stage_leaves_nothing_and_keeps_old_artifact(tmp_path):
    out = make_artifact(tmp_path / "a", {"w.bin": b"old"})
    with (
        pytest.raises(RuntimeError),
        write_artifact(out, kind="t", stage="s", params={}, params_digest="d", seed=None, inputs=[]) as art,
    ):
        (art.path / "w.bin").write_bytes(b"new-half-written")
        raise RuntimeError("boom")
    assert (out / "w.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    with (
        pytest.raises(RuntimeError),
        write_artifact(
            tmp_path / "b", kind="t", stage="s", params={}, params_digest="d", seed=None, inputs=[]
        ),
    ):
        raise RuntimeError("boom")
    assert not (tmp_path / "b").exists()


def test_incomplete_artifact_is_rejected(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "w.bin").write_bytes(b"1")
    with pytest.raises(ArtifactError, match="not a complete artifact"):
        open_input("model", tmp_path / "half")
    raw = open_input("raw", tmp_path / "half", require_artifact=False)
    assert raw.digest.startswith("sha256:") and raw.lineage is None


def test_verify_chain_and_detect_one_changed_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "img.jpg").write_bytes(b"\xff\xd8rawbytes")
    raw = open_input("raw", "raw", require_artifact=False)
    a = make_artifact(Path("a"), {"shard.tar": b"abc"}, inputs=[raw], stage="shard")
    b = make_artifact(Path("b"), {"model.bin": b"weights"}, inputs=[open_input("shards", a)], stage="train")
    assert verify(str(b)) == ["b", "a", "raw"]
    tree = load_tree(str(b))
    text = "\n".join(render_text(tree))
    assert "train" in text and "shard" in text and "raw data raw" in text
    assert "flowchart LR" in render_graph(tree, "mermaid") and "digraph" in render_graph(tree, "dot")
    # one byte of a grand-parent's file changes -> verify names that file
    data = bytearray((a / "shard.tar").read_bytes())
    data[0] ^= 1
    (a / "shard.tar").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"a: file shard\.tar changed"):
        verify(str(b))
    (a / "shard.tar").write_bytes(b"abc")
    (tmp_path / "raw" / "img.jpg").write_bytes(b"\xff\xd8rawbytez")
    with pytest.raises(ArtifactError, match="raw input 'raw' changed"):
        verify(str(b))


def test_scrub_removes_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretvalue123")
    cleaned = scrub(
        {
            "endpoint": "https://user:pw@host/x?X-Amz-Signature=abc",
            "secret_key": "s",
            "note": "key supersecretvalue123 here",
            "nested": [{"password": "p"}],
        }
    )
    text = json.dumps(cleaned)
    for secret in ("pw@", "X-Amz-Signature=abc", "supersecretvalue123", '"s"', '"p"'):
        assert secret not in text


def test_raw_input_inside_an_artifact_links_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synth = make_artifact(
        Path("data/synth"), {"dom/a.jpg": b"\xff\xd8a", "dom/b.jpg": b"\xff\xd8b"}, stage="synth"
    )
    raw = open_input("raw", "data/synth/dom", require_artifact=False)
    ref = raw.ref()
    assert ref.extra["within"] == "data/synth"
    shards = make_artifact(Path("shards"), {"s.tar": b"t"}, inputs=[raw], stage="shard")
    assert verify(str(shards)) == ["shards", "data/synth", "data/synth/dom"]  # the writer first
    text = "\n".join(render_text(load_tree(str(shards))))
    assert "raw data data/synth/dom" in text and "synth [test] data/synth" in text
    (synth / "other.txt").write_text("not listed")
    with pytest.raises(ArtifactError, match="other.txt is not listed"):
        verify(str(shards))


def test_metrics_port_serves_prometheus_text():
    import urllib.request

    from reidflow.obs.metrics import StageMetrics
    from tests.conftest import free_port

    m = StageMetrics(stage="pretrain", instance="unit")
    port = free_port()
    m.serve(port)
    m.observe_step(losses={"ce": 1.5}, lrs={"model": 0.1}, seconds=0.3, samples=32)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "reidflow_samples_processed_total 32.0" in text and 'reidflow_loss{term="ce"} 1.5' in text


def test_shared_ancestors_are_rendered_once_and_started_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = make_artifact(Path("a"), {"x": b"1"}, stage="shard")
    parent = open_input("s", a)
    with write_artifact(
        Path("b"),
        kind="t",
        stage="train",
        params={},
        params_digest="d",
        seed=0,
        inputs=[parent, open_input("t", a)],
        started="2020-01-01T00:00:00+00:00",
    ) as art:
        (art.path / "w").write_bytes(b"w")
    text = render_text(load_tree("b"))
    assert sum("shard [test] a" in line for line in text) == 2 and text[-1].endswith("(shown above)")
    assert json.loads(Path("b/lineage.json").read_text())["started"] == "2020-01-01T00:00:00+00:00"


# ------------------------------------------------------------------------------------------------
# issue 16: nothing lost, nothing forged


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def rewrite_lineage(path: Path, edit) -> None:
    record = json.loads((path / "lineage.json").read_text())
    edit(record)
    (path / "lineage.json").write_text(json.dumps(record, indent=2))


@pytest.mark.parametrize("key", ["../../escaped.txt", "/tmp/abs.txt", "a/../../b", "./a", "a//b", "a\\..\\b"])
def test_file_keys_in_a_record_are_checked_before_any_io(tmp_path, key):
    art = make_artifact(tmp_path / "a", {"w.bin": b"123"})
    rewrite_lineage(art, lambda r: r["artifact"]["files"].update({key: r["artifact"]["files"]["w.bin"]}))
    with pytest.raises(ArtifactError, match="not a relative, normalized path"):
        open_input("x", art)
    with pytest.raises(ArtifactError, match="not a relative, normalized path"):
        verify(str(art))


def test_symlink_leading_out_of_an_artifact_is_refused(tmp_path):
    art = make_artifact(tmp_path / "a", {"w.bin": b"123"})
    (tmp_path / "outside.bin").write_bytes(b"123")
    (art / "w.bin").unlink()
    (art / "w.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(ArtifactError, match="leads outside the artifact"):
        open_input("x", art)


def test_output_replaces_only_a_reidflow_artifact(tmp_path):
    from reidflow.errors import ConfigError
    from reidflow.store.artifacts import check_output

    dataset = tmp_path / "raw"
    (dataset / "bounding_box_train").mkdir(parents=True)
    (dataset / "bounding_box_train" / "0001_c1s1_000001_00.jpg").write_bytes(b"\xff\xd8img")
    with pytest.raises(ArtifactError, match="is not a reidflow artifact"):
        make_artifact(dataset, {"w.bin": b"1"})
    assert (dataset / "bounding_box_train" / "0001_c1s1_000001_00.jpg").read_bytes() == b"\xff\xd8img"
    (tmp_path / "file.txt").write_text("keep")
    with pytest.raises(ArtifactError, match="not a directory"):
        check_output(tmp_path / "file.txt")
    broken = make_artifact(tmp_path / "broken", {"w.bin": b"1"})
    (broken / "lineage.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="refusing to replace"):
        check_output(broken)
    (tmp_path / "empty").mkdir()
    make_artifact(tmp_path / "empty", {"w.bin": b"1"})  # an empty folder holds nothing to lose
    make_artifact(tmp_path / "empty", {"w.bin": b"2"})  # a previous artifact is replaced
    assert (tmp_path / "empty" / "w.bin").read_bytes() == b"2"
    for bad in ("", "   ", "http://x/y", "s3://ab/x", "s3://bucket/a/../b", "s3://user:pw@bucket/x"):
        with pytest.raises(ConfigError) as err:
            check_output(bad)
        assert "pw" not in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "http:").exists() and not Path("http:").exists()


def test_interrupted_replace_is_recovered_on_next_access(tmp_path):
    import socket

    dest = make_artifact(tmp_path / "model", {"w.bin": b"old"})
    # a writer killed between its two renames: the old artifact sits under its .old-* name
    side = tmp_path / f".model.old-{dead_pid()}-0123abcd-{socket.gethostname()}"
    dest.rename(side)
    stale_tmp = tmp_path / f".model.tmp-{dead_pid()}-89abcdef-{socket.gethostname()}"
    stale_tmp.mkdir()
    (stale_tmp / "half.bin").write_bytes(b"x")
    got = open_input("m", dest)
    assert (got.path / "w.bin").read_bytes() == b"old" and not side.exists() and not stale_tmp.exists()
    # an .old-* left after a completed swap is removed; a live writer's folders are left alone
    done = tmp_path / f".model.old-{dead_pid()}-00000000-{socket.gethostname()}"
    done.mkdir()
    live = tmp_path / f".model.tmp-{os.getpid()}-11111111-{socket.gethostname()}"
    live.mkdir()
    make_artifact(dest, {"w.bin": b"new"})
    assert not done.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", live.name])


def test_a_changed_input_is_refused_and_the_child_records_what_it_read(tmp_path, monkeypatch):
    parent = make_artifact(tmp_path / "p", {"shard.tar": b"abcdef"})
    read = open_input("p", parent)
    child = make_artifact(tmp_path / "c", {"m.bin": b"1"}, inputs=[read])
    pinned = json.loads((child / "lineage.json").read_text())["inputs"][0]
    assert pinned["digest"] == read.digest and pinned["record_digest"] == read.record_digest
    (parent / "shard.tar").write_bytes(b"abcdeX")  # same size: only the hash sees it
    with pytest.raises(ArtifactError, match="file shard.tar changed: sha256"):
        open_input("p", parent)
    monkeypatch.setenv("REIDFLOW_VERIFY_INPUTS", "size")  # the documented opt-out: sizes only
    assert open_input("p", parent).digest == read.digest
    (parent / "shard.tar").write_bytes(b"abcdefg")
    with pytest.raises(ArtifactError, match="file shard.tar changed: 7 bytes, lineage recorded 6"):
        open_input("p", parent)


VOLATILE_EDITS = {
    "started": lambda r: r.update(started="1999-01-01T00:00:00+00:00"),
    "finished": lambda r: r.update(finished="1999-01-01T00:00:00+00:00"),
    "runtime.host": lambda r: r["runtime"].update(host="elsewhere"),
    "runtime.run_id": lambda r: r["runtime"].update(run_id="other"),
    "artifact.uri": lambda r: r["artifact"].update(uri="moved/there"),
}
RECORD_EDITS = {
    "params": lambda r: r["params"].update(x=2),
    "params_digest": lambda r: r.update(params_digest="sha256:q"),
    "seed": lambda r: r.update(seed=2),
    "stage": lambda r: r.update(stage="other"),
    "metrics": lambda r: r["metrics"].update(score=0.9),
    "code.version": lambda r: r["code"].update(version="0.0.0"),
    "runtime.device": lambda r: r["runtime"].update(device="cuda"),
    "artifact.kind": lambda r: r["artifact"].update(kind="model"),
    "inputs": lambda r: r["inputs"].append({"name": "x", "uri": "elsewhere", "digest": "sha256:" + "1" * 64}),
}


@pytest.mark.parametrize("field", sorted(RECORD_EDITS))
def test_editing_an_ancestor_record_fails_verify(tmp_path, field):
    parent = make_artifact(tmp_path / "p", {"shard.tar": b"abc"})
    child = make_artifact(tmp_path / "c", {"m.bin": b"1"}, inputs=[open_input("p", parent)])
    assert verify(str(child)) == [str(child), str(parent)]
    rewrite_lineage(parent, RECORD_EDITS[field])
    with pytest.raises(ArtifactError, match="was edited after it was written"):
        verify(str(child))

    # a forger who also rewrites the record digest is caught by the digest the child pinned
    def forge(record):
        from reidflow.store.lineage import record_digest

        record["artifact"]["record_digest"] = record_digest(record)

    rewrite_lineage(parent, forge)
    with pytest.raises(ArtifactError, match="changed since its child read it"):
        verify(str(child))


@pytest.mark.parametrize("field", sorted(VOLATILE_EDITS))
def test_volatile_fields_are_documented_and_not_pinned(tmp_path, field):
    from reidflow.store.lineage import VOLATILE_FIELDS

    assert field in VOLATILE_FIELDS
    parent = make_artifact(tmp_path / "p", {"shard.tar": b"abc"})
    child = make_artifact(tmp_path / "c", {"m.bin": b"1"}, inputs=[open_input("p", parent)])
    rewrite_lineage(parent, VOLATILE_EDITS[field])
    assert verify(str(child)) == [str(child), str(parent)]


def test_forged_file_lists_and_digests_fail_verify(tmp_path):
    art = make_artifact(tmp_path / "a", {"w.bin": b"123"})
    rewrite_lineage(art, lambda r: r["artifact"]["files"].pop("w.bin"))
    with pytest.raises(ArtifactError):
        verify(str(art))
    art = make_artifact(tmp_path / "b", {"w.bin": b"123"})
    rewrite_lineage(art, lambda r: r["artifact"].update(digest="sha256:" + "0" * 64))
    with pytest.raises(ArtifactError, match="digest does not match its file list"):
        verify(str(art))
    art = make_artifact(tmp_path / "c", {"w.bin": b"123"})
    rewrite_lineage(art, lambda r: r["artifact"].update(digest="../../x"))
    with pytest.raises(ArtifactError, match="is not a digest"):
        open_input("c", art)


def test_verify_names_the_changed_raw_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw" / "sub").mkdir(parents=True)
    (tmp_path / "raw" / "sub" / "0001_c1.jpg").write_bytes(b"\xff\xd8one")
    (tmp_path / "raw" / "0002_c2.jpg").write_bytes(b"\xff\xd8two")
    shards = make_artifact(
        Path("shards"), {"s.tar": b"t"}, inputs=[open_input("raw", "raw", require_artifact=False)]
    )
    (tmp_path / "raw" / "sub" / "0001_c1.jpg").write_bytes(b"\xff\xd8ONE")
    with pytest.raises(ArtifactError, match=r"raw input 'raw' changed: file sub/0001_c1.jpg changed"):
        verify(str(shards))
    (tmp_path / "raw" / "sub" / "0001_c1.jpg").write_bytes(b"\xff\xd8one")
    (tmp_path / "raw" / "0003_c1.jpg").write_bytes(b"\xff\xd8new")
    with pytest.raises(ArtifactError, match="file 0003_c1.jpg was added"):
        verify(str(shards))


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    import socket
    import subprocess
    import sys

    from reidflow.errors import ConfigError
    from reidflow.store.locks import RunLock

    lock_path = tmp_path / "out.ckpt.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "t"}))
        with pytest.raises(ConfigError, match=rf"another run is writing .*pid {holder.pid} on"):
            RunLock(lock_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(lock_path):  # the holder is gone: its lock is stale
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert not lock_path.exists()
    lock_path.write_text(json.dumps({"pid": 1, "host": "another-host", "since": "t"}))
    with pytest.raises(ConfigError, match="on another-host"):  # cannot be checked from here
        RunLock(lock_path).acquire()


def test_timing_lives_in_lineage_and_reruns_keep_every_digest(tmp_path):
    """Wall time and throughput go to lineage.json's runtime.timing, outside the payload and the record
    digest: a rerun with the same payload gives the same artifact and record digests (what
    `reidflow lineage digests`, and so a DVC dependency on its file, sees)."""
    from reidflow.store.payload_digests import payload_digests, write_payload_digests

    def make(path: Path, seconds: float) -> Path:
        with write_artifact(
            path, kind="model", stage="unit", params={"x": 1}, params_digest="sha256:p", seed=1,
            inputs=[], ctx=RunContext(orchestrator="cli"),
        ) as art:  # fmt: skip
            (art.path / "w.bin").write_bytes(b"weights")
            art.metrics = {"score": 0.5}
            art.timing = {"wall_time_s": seconds}
        return path

    first = json.loads((make(tmp_path / "models" / "m", 1.0) / "lineage.json").read_text())
    digests = write_payload_digests([tmp_path / "models"], tmp_path / "d.json").read_text()
    second = json.loads((make(tmp_path / "models" / "m", 9.0) / "lineage.json").read_text())
    assert (first["runtime"]["timing"], second["runtime"]["timing"]) == (
        {"wall_time_s": 1.0},
        {"wall_time_s": 9.0},
    )
    assert "wall_time_s" not in (tmp_path / "models" / "m" / "metrics.json").read_text()
    assert first["artifact"]["digest"] == second["artifact"]["digest"]
    assert first["artifact"]["record_digest"] == second["artifact"]["record_digest"]
    assert write_payload_digests([tmp_path / "models"], tmp_path / "d.json").read_text() == digests
    [(name, entry)] = payload_digests([tmp_path / "models" / "m"]).items()
    assert name.endswith("models/m") and entry["kind"] == "model"
    verify(str(tmp_path / "models" / "m"))
    with pytest.raises(ArtifactError, match="neither an artifact"):
        payload_digests([tmp_path / "nowhere"])
