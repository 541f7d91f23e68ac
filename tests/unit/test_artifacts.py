import json
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
    assert verify(str(shards)) == ["shards", "data/synth/dom", "data/synth"]
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
