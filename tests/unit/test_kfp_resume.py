"""A training task killed mid-training resumes, in a new pod, from the checkpoints it kept in the
artifact store (S3: a moto server), and its model's training curve is the uninterrupted one.

Each "pod" is a subprocess with its own TMPDIR (the local checkpoint directory of an S3 output lives
there), running the pretrain component's function as the KFP executor would. The first pod kills
itself (SIGKILL, no cleanup) right after its second checkpoint reached the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "identities": 8,
    "cameras": 3,
    "cameras_per_identity": [2, 2],
    "images_per_identity_camera": [2, 3],
    "distractors": 0,
    "image": {"height": 64, "width": 32},
}
POD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from kfp.dsl import Dataset, Model
    from components import checkpoints
    from components.pretrain import component

    args = json.loads(sys.argv[1])
    if args["kill_after"]:  # the pod dies once this checkpoint is in the store
        from reidflow.obs import train_hook

        step_hook = train_hook.PrometheusHook.after_step

        def after_step(self, step):
            step_hook(self, step)
            if step.iteration == args["kill_after"] + 1:  # the engine saved the checkpoint after the hook
                store = checkpoints.CheckpointStore(args["output"] + ".ckpt")
                deadline = time.monotonic() + 60
                while store.latest() != f"ckpt-{args['kill_after']:08d}" and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)

        train_hook.PrometheusHook.after_step = after_step
    model = Model(uri=args["model_uri"])
    component.python_func(
        params_yaml=json.dumps(args["params"]),
        overrides=[],
        backbone="osnet_x0_25",
        shards=Dataset(uri=args["manifest"]),
        artifact_root=args["artifact_root"],
        gpus=1,
        shards_digest="",
        model=model,
        task_name="pretrain",
    )
    print("published", json.dumps(model.metadata))
    """
)


def make_shards(tmp_path: Path) -> Path:
    """Two tiny synthetic domains, sharded (source + target), and the manifest that lists them."""
    from components import runtime

    from reidflow.config import section
    from reidflow.stages import shard, synth

    params = {
        "synth": {
            "seed": 0,
            "workers": 1,
            "domains": [
                {"preset": "mall_warm", "overrides": TINY},
                {"preset": "night_station", "overrides": TINY},
            ],
        },
        "shard": {"shard_max_mb": 1},
        "datasets": {
            "mall_warm": {"reader": "market1501", "root": "raw/mall_warm", "role": "source"},
            "night_station": {"reader": "market1501", "root": "raw/night_station", "role": "target"},
        },
    }
    synth.run(section(params, "synth", synth.SynthConfig), tmp_path / "raw")
    entries = []
    for name in ("mall_warm", "night_station"):
        src = shard.dataset_source(params, name)
        out = tmp_path / "shards" / name
        shard.run(
            section(params, "shard", shard.ShardConfig), name, src, out, raw_uri=str(tmp_path / "raw" / name)
        )
        digest = runtime.read_record(str(out))["artifact"]["digest"]
        entries.append({"dataset": name, "role": src.role, "uri": str(out), "digest": digest})
    runtime.write_manifest(str(tmp_path / "manifest"), entries)
    return tmp_path / "manifest"


def run_pod(tmp_path: Path, name: str, args: dict[str, Any]) -> subprocess.CompletedProcess:
    pod_tmp = tmp_path / name / "tmp"
    pod_tmp.mkdir(parents=True)
    env = {
        **os.environ,
        "TMPDIR": str(pod_tmp),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
        "REIDFLOW_CHECKPOINT_SYNC_S": "0.05",
        "REIDFLOW_RUN_ID": "run-1",  # on a cluster: the pod's pipeline/runid label
        "REIDFLOW_NO_PROGRESS": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", POD, json.dumps(args)],
        cwd=tmp_path / name,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_killed_training_task_resumes_from_the_artifact_store(
    tmp_path: Path, s3_env: dict[str, str]
) -> None:
    from components import checkpoints, runtime

    from reidflow.store import s3

    manifest = make_shards(tmp_path)
    root = f"s3://{s3_env['BUCKET']}/kfp"
    output = f"{root}/run-1/pretrain/osnet_x0_25"
    args = {
        "params": {
            "pretrain": {
                "model": {"backbone": "osnet_x0_25"},
                "transforms": {"height": 64, "width": 32},
                "sampler": {"P": 4, "K": 2},
                "engine": {
                    "epochs": 100,  # a tiny epoch is 2 iterations: max_iters decides
                    "max_iters": 8,
                    "checkpoint_every": 2,
                    "device": "cpu",
                    "log_every": 1,
                },
                "num_workers": 0,
                "eval": {"enabled": False},
            }
        },
        "manifest": str(manifest),
        "artifact_root": root,
        "output": output,
        "model_uri": str(tmp_path / "kfp-root" / "pretrain" / "model"),
        "kill_after": 4,
    }
    first = run_pod(tmp_path, "pod1", args)
    assert first.returncode == -9, f"the first pod should have been killed:\n{first.stdout}\n{first.stderr}"
    assert checkpoints.CheckpointStore(output + ".ckpt").latest() == "ckpt-00000004"

    second = run_pod(tmp_path, "pod2", {**args, "kill_after": 0})
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    assert f"resuming from checkpoint ckpt-00000004 restored from {output}.ckpt" in second.stdout
    published = json.loads(second.stdout.split("published ", 1)[1])
    assert published["uri"] == output
    curve = json.loads((runtime.local_copy(output) / "training_curve.json").read_text())
    assert [row["iteration"] for row in curve] == list(range(1, 9)), "the history continues, not restarts"
    bucket, prefix = s3.split_s3(output + ".ckpt")
    assert list(s3.list_keys(bucket, prefix)) == [], "the store is dropped once the model is published"
