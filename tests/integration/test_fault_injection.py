"""Fault injection on the real stages (issue 16): kill -9 during training and during the final write,
a second writer on the same output, tampering with every file and record field, and the bad-input
table of the CLI's error contract (exit 2, one line, no traceback). S3 outages mid-upload are in
test_s3_store.py (a proxy in front of moto).

Tiny data: two synthetic domains of 10 identities at 64x32, four training iterations."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import reidflow, tiny_params, write_params

pytestmark = pytest.mark.integration
SOURCES = ("mall_warm", "night_station")
SOURCE_ARGS = [a for name in SOURCES for a in ("--input", f"source=artifacts/shards/{name}")]
SECRET = "faultInjectionSecretNeverPrinted42"


def env() -> dict[str, str]:
    return {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "AWS_SECRET_ACCESS_KEY": SECRET}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Synthetic data, shards and one uninterrupted pretraining run (the reference)."""
    root = tmp_path_factory.mktemp("faults")
    p = tiny_params()
    p["synth"]["domains"] = p["synth"]["domains"][:2]
    p["datasets"] = {k: v for k, v in p["datasets"].items() if k in SOURCES}
    s = p["pretrain"]
    s["engine"] = {**s["engine"], "epochs": 2, "max_iters": 4, "checkpoint_every": 2}
    s["target_bn"] = {"enabled": False, "batch_size": 8}
    write_params(root / "params.yaml", p)
    reidflow("synth", "--output", "data/synth", cwd=root, env=env())
    for name in SOURCES:
        reidflow("shard", "-d", name, "--output", f"artifacts/shards/{name}", cwd=root, env=env())
    reidflow("pretrain", "--output", "artifacts/models/full", *SOURCE_ARGS, cwd=root, env=env())
    return root


def start_pretrain(root: Path, output: str, *extra: str) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "reidflow"
    return subprocess.Popen(
        [str(exe), "pretrain", "--output", output, *SOURCE_ARGS, *extra],
        cwd=root,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(proc: subprocess.Popen, seen: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``seen()`` holds (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not seen():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the fault point:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the fault point was never reached")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()


def comparable(artifact: Path) -> dict[str, object]:
    """What a resumed artifact must share with an uninterrupted one (all but timings, which live in
    lineage.json's runtime.timing)."""
    metrics = json.loads((artifact / "metrics.json").read_text())
    assert "wall_time_s" not in metrics["train"]
    lineage = json.loads((artifact / "lineage.json").read_text())
    return {
        "weights": (artifact / "model.safetensors").read_bytes(),
        "model.json": (artifact / "model.json").read_text(),
        "curve": json.loads((artifact / "training_curve.json").read_text()),
        "metrics": metrics,
        "params_digest": lineage["params_digest"],
        "inputs": lineage["inputs"],
    }


def checkpoint_written(root: Path, output: str, iteration: int) -> Callable[[], bool]:
    return lambda: (root / f"{output}.ckpt" / f"ckpt-{iteration:08d}" / "state.json").is_file()


def final_write_started(root: Path, output: str) -> Callable[[], bool]:
    name = Path(output).name
    return lambda: any(p.name.startswith(f".{name}.tmp-") for p in (root / output).parent.iterdir())


@pytest.mark.parametrize(
    "fault",
    ["after_checkpoint_2", "during_final_write"],
)
def test_kill_9_then_resume_equals_an_uninterrupted_run(root, fault):
    output = f"artifacts/models/{fault}"
    proc = start_pretrain(root, output)
    point = (
        checkpoint_written(root, output, 2)
        if fault == "after_checkpoint_2"
        else final_write_started(root, output)
    )
    kill_when(proc, point)
    assert not (root / output).exists(), "a killed run must leave nothing that looks complete"
    again = reidflow("pretrain", "--output", output, *SOURCE_ARGS, cwd=root, env=env(), check=False)
    assert again.returncode == 2 and "pass --resume" in again.stderr  # no silent restart over checkpoints
    reidflow("pretrain", "--output", output, *SOURCE_ARGS, "--resume", cwd=root, env=env())
    assert comparable(root / output) == comparable(root / "artifacts/models/full")
    leftovers = [p.name for p in (root / output).parent.iterdir() if p.name.startswith(f".{fault}")]
    assert leftovers == [] and not (root / f"{output}.ckpt").exists()
    assert not (root / f"{output}.ckpt.lock").exists()


def test_a_second_writer_on_the_same_output_is_refused(root):
    output = "artifacts/models/contended"
    first = start_pretrain(root, output)
    lock = root / f"{output}.ckpt.lock"
    deadline = time.monotonic() + 300
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # hold the first run inside its training while the second starts
    try:
        second = reidflow(
            "pretrain", "--output", output, *SOURCE_ARGS, "--resume", cwd=root, env=env(), check=False
        )
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2 and "another run is writing" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert comparable(root / output) == comparable(root / "artifacts/models/full")


def test_an_interrupted_replace_is_recovered(root):
    """A crash between the two renames of an overwrite: the old artifact comes back."""
    import socket

    from reidflow.store.ancestry import verify

    work = root / "artifacts/replace"
    shutil.copytree(root / "artifacts/models/full", work / "model")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (work / "model").rename(work / f".model.old-{gone.pid}-0badc0de-{socket.gethostname()}")
    checked = verify("artifacts/replace/model", base=root)
    assert checked[0] == "artifacts/replace/model" and "artifacts/shards/mall_warm" in checked
    assert sorted(p.name for p in work.iterdir()) == ["model"]


# ------------------------------------------------------------------------------------------------
# tampering: every file of a model and a shard artifact, and record fields of an ancestor


def _files(artifact: Path) -> list[str]:
    return sorted(json.loads((artifact / "lineage.json").read_text())["artifact"]["files"])


def test_tampering_with_any_file_is_named_by_verify(root):
    from reidflow.errors import ArtifactError
    from reidflow.store.ancestry import verify

    top = "artifacts/models/full"
    targets = [(top, rel) for rel in _files(root / top)]
    targets += [("artifacts/shards/mall_warm", rel) for rel in _files(root / "artifacts/shards/mall_warm")]
    image = min((root / "data/synth/mall_warm/bounding_box_train").iterdir())
    targets += [("data/synth", f"mall_warm/bounding_box_train/{image.name}")]
    for artifact, rel in targets:
        path = root / artifact / rel
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        try:
            with pytest.raises(ArtifactError, match=f"file {rel} changed"):
                verify(top, base=root)
        finally:
            path.write_bytes(original)
    verify(top, base=root)


@pytest.mark.parametrize(
    "edit",
    [
        ("params", lambda r: r["params"].update({min(r["params"]): "changed"})),
        ("params_digest", lambda r: r.update(params_digest="sha256:" + "2" * 64)),
        ("seed", lambda r: r.update(seed=(r["seed"] or 0) + 1)),
        ("inputs", lambda r: r["inputs"][0].update(digest="sha256:" + "3" * 64)),
        ("metrics", lambda r: r["metrics"].update(forged=True)),
        ("code", lambda r: r["code"].update(git_commit="0" * 40)),
    ],
    ids=lambda e: e[0] if isinstance(e, tuple) else None,
)
def test_editing_a_record_field_of_an_ancestor_fails_verify(root, edit, tmp_path):
    from reidflow.errors import ArtifactError
    from reidflow.store.ancestry import verify
    from reidflow.store.lineage import record_digest

    record_file = root / "artifacts/shards/mall_warm/lineage.json"
    original = record_file.read_text()
    record = json.loads(original)
    edit[1](record)
    try:
        record_file.write_text(json.dumps(record, indent=2))
        with pytest.raises(ArtifactError, match="was edited after it was written"):
            verify("artifacts/models/full", base=root)
        record["artifact"]["record_digest"] = record_digest(record)  # a careful forger
        record_file.write_text(json.dumps(record, indent=2))
        with pytest.raises(ArtifactError, match="changed since its child read it"):
            verify("artifacts/models/full", base=root)
    finally:
        record_file.write_text(original)


def test_a_flipped_byte_in_an_input_is_refused_before_training(root):
    tar = min((root / "artifacts/shards/mall_warm/mall_warm").glob("*.tar"))
    original = tar.read_bytes()
    tar.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        bad = reidflow(
            "pretrain", "--output", "artifacts/models/flip", *SOURCE_ARGS, cwd=root, env=env(), check=False
        )
    finally:
        tar.write_bytes(original)
    assert bad.returncode == 2 and f"mall_warm/{tar.name} changed" in bad.stderr
    assert not (root / "artifacts/models/flip.ckpt").exists()


# ------------------------------------------------------------------------------------------------
# the bad-input table: exit 2, one line naming the file/key/URI, no traceback, nothing left behind


def forged_model(root: Path) -> str:
    """A well-formed model artifact whose model.safetensors is a pickle (lineage matches it)."""
    from reidflow.store.artifacts import write_artifact

    with write_artifact(
        root / "artifacts/models/pickled", kind="model", stage="forged", params={}, params_digest="sha256:x",
        seed=0, inputs=[],
    ) as art:  # fmt: skip
        shutil.copy(root / "artifacts/models/full/model.json", art.path / "model.json")
        (art.path / "model.safetensors").write_bytes(pickle.dumps({"state": [1, 2, 3]}))
    return "artifacts/models/pickled"


def bad_inputs(root: Path, s3_endpoint: str) -> list[tuple[str, list[str], dict[str, str], str]]:
    from tests.conftest import free_port

    (root / "not_utf8.yaml").write_bytes((root / "params.yaml").read_bytes() + b"\nnote: \xff\xfe\n")
    (root / "bomb.yaml").write_text(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
        )
        + "pretrain:\n  model: *i\n"
    )
    (root / "raw_dataset").mkdir(exist_ok=True)
    (root / "raw_dataset" / "0001_c1s1_000001_00.jpg").write_bytes(b"\xff\xd8precious")
    moto = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "AKIAFAULTS",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    train = ["pretrain", *SOURCE_ARGS]
    down = {**moto, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "REIDFLOW_S3_MAX_ATTEMPTS": "1"}
    evaluate = ["evaluate", "--input", "eval=artifacts/shards/mall_warm", "--output", "artifacts/eval_bad"]
    evaluate += ["--set", "evaluate.camera.enabled=false"]
    return [
        ("endpoint down", ["lineage", "verify", "s3://reidflow-bucket/x"], down, "cannot reach the S3 endpoint"),
        ("missing bucket", [*train, "--output", "s3://no-such-bucket-r16/m"], moto, "the bucket does not exist"),
        ("non-UTF-8 params", [*train, "--params", "not_utf8.yaml", "--output", "o1"], {}, "not UTF-8 text"),
        ("alias bomb", [*train, "--params", "bomb.yaml", "--output", "o2"], {}, "refusing YAML"),
        ("empty output", [*train, "--output", ""], {}, "--output ''"),
        ("http output", [*train, "--output", "http://x/y"], {}, "unsupported URI scheme 'http'"),
        ("short bucket", [*train, "--output", "s3://ab/y"], {}, "bucket name"),
        ("dot-dot prefix", [*train, "--output", "s3://bucket/a/../b"], {}, "'..' parts"),
        ("password in URI", [*train, "--output", f"s3://me:{SECRET}@bucket/m"], {}, "credentials in an s3://"),
        ("not an artifact", [*train, "--output", "raw_dataset"], {}, "is not a reidflow artifact"),
        ("pickle as safetensors", [*evaluate, "--input", f"model={forged_model(root)}"], {}, "not a safetensors file"),
    ]  # fmt: skip


def test_bad_input_table(root, s3_server):
    before = sorted(p.name for p in root.iterdir())
    failures = []
    for name, args, extra_env, expected in bad_inputs(root, s3_server):
        proc = reidflow(*args, cwd=root, env={**env(), **extra_env}, check=False)
        lines = proc.stderr.strip().splitlines()
        ok = (
            proc.returncode == 2
            and len(lines) == 1
            and lines[0].startswith("error: ")
            and expected in lines[0]
            and "Traceback" not in proc.stderr + proc.stdout
            and SECRET not in proc.stderr + proc.stdout
        )
        if not ok:
            failures.append(f"{name}: rc {proc.returncode}\n{proc.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
    after = sorted(p.name for p in root.iterdir())
    assert [n for n in after if n not in before and not n.endswith(".yaml")] == ["raw_dataset"]
    assert not (root / "http:").exists() and not list(root.glob("o?*.ckpt"))
    assert (root / "raw_dataset" / "0001_c1s1_000001_00.jpg").read_bytes() == b"\xff\xd8precious"
