"""Stages reading and writing s3:// artifacts on a real S3-compatible server, and pretraining under
torchrun with 2 gloo processes (the path a multi-GPU pod takes with NCCL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import reidflow, tiny_params, write_params

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3stages")
    write_params(root / "params.yaml", tiny_params())
    reidflow("synth", "--output", "data/synth", cwd=root, env={**os.environ, "REIDFLOW_NO_PROGRESS": "1"})
    return root


def test_stages_chain_through_s3_and_verify(tiny_data, s3_env):
    env = {**os.environ, **{k: v for k, v in s3_env.items() if k != "BUCKET"}, "REIDFLOW_NO_PROGRESS": "1"}
    base = f"s3://{s3_env['BUCKET']}/runs/r1"
    for name in ("mall_warm", "target_city"):
        reidflow("shard", "-d", name, "--output", f"{base}/shards/{name}", cwd=tiny_data, env=env)
    reidflow(
        "pretrain",
        "--output",
        f"{base}/models/osnet",
        "--input",
        f"source={base}/shards/mall_warm",
        "--input",
        f"target={base}/shards/target_city",
        "--set",
        "pretrain.eval.enabled=false",
        cwd=tiny_data,
        env=env,
    )
    reidflow(
        "evaluate",
        "--output",
        f"{base}/evaluate",
        "--input",
        f"model={base}/models/osnet",
        "--input",
        f"eval={base}/shards/target_city",
        "--set",
        "evaluate.camera.enabled=false",
        "--set",
        "evaluate.report.embedding=none",
        cwd=tiny_data,
        env=env,
    )
    verified = reidflow("lineage", "verify", f"{base}/evaluate", cwd=tiny_data, env=env)
    assert "4 artifact(s) verified" in verified.stderr or f"{base}/models/osnet" in verified.stderr
    shown = reidflow("lineage", "show", f"{base}/evaluate", cwd=tiny_data, env=env).stdout
    assert f"{base}/shards/target_city" in shown and "pretrain" in shown
    assert not any(Path(tiny_data).glob("artifacts")), "nothing was written locally"
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        assert s3_env[key] not in shown + verified.stderr


def test_pretrain_under_torchrun_two_gloo_processes(tiny_data):
    shards = tiny_data / "artifacts" / "tr"
    env = {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    reidflow("shard", "-d", "mall_warm", "--output", str(shards / "mall_warm"), cwd=tiny_data, env=env)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "reidflow.cli",
        "pretrain",
        "--output",
        str(shards / "model"),
        "--input",
        f"source={shards / 'mall_warm'}",
        "--set",
        "pretrain.target_bn.enabled=false",
        "--set",
        "pretrain.engine.device=cpu",
        "--set",
        "pretrain.engine.epochs=3",
    ]
    proc = subprocess.run(
        cmd, cwd=tiny_data, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stderr
    metrics = json.loads((shards / "model" / "metrics.json").read_text())
    assert metrics["train"]["iterations"] == 3
    lineage = json.loads((shards / "model" / "lineage.json").read_text())
    assert lineage["params"]["sampler"]["P"] == 4
    assert sorted(p.name for p in shards.iterdir()) == ["mall_warm", "model"], "one artifact, no leftovers"
