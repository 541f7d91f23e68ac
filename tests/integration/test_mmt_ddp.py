"""World size does not change MMT+: one process vs two gloo ranks under torchrun, same global batch.

DSBN reduces its batch statistics across the processes itself (PyTorch's SyncBatchNorm does not run
on CPU), the MoCo queues gather keys in rank order and the target features of an epoch are computed
in the same batches whichever rank computes them, so the pseudo labels of every epoch are identical
and the losses, the weights and the BN running statistics agree to within float tolerance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("mmt_ddp_worker.py")
TORCHRUN = Path(sys.executable).parent / "torchrun"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.integration
def test_one_process_and_two_ranks_give_the_same_mmt_run(tmp_path: Path) -> None:
    run([sys.executable, str(WORKER), "--out", str(tmp_path / "one"), "--ckpt", str(tmp_path / "ck-one")])
    run(
        [
            str(TORCHRUN),
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            str(WORKER),
            "--out",
            str(tmp_path / "two"),
            "--ckpt",
            str(tmp_path / "ck-two"),
        ]
    )
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["final"] == two["final"] == 6

    # identical pseudo labels at every epoch
    assert one["cluster_history"] == two["cluster_history"]
    assert len(one["cluster_history"]) == 3 and one["cluster_history"][0]["clusters"] > 1
    assert one["labels"] == two["labels"]

    # the same losses (each rank's mean over its half, averaged = the full-batch mean)
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("ce", "soft_ce", "moco", "acc1", "acc2"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["iteration"], key)

    # the same weights, DSBN running statistics (both branches), mean nets and MoCo queues
    w1, w2 = (
        load_file(tmp_path / "one" / "weights.safetensors"),
        load_file(tmp_path / "two" / "weights.safetensors"),
    )
    assert w1.keys() == w2.keys()
    assert any(".source.running_mean" in k for k in w1) and any("queue1.keys" in k for k in w1)
    for key, value in w1.items():
        if value.is_floating_point():
            assert torch.allclose(w2[key], value, atol=2e-5, rtol=1e-5), (key, (w2[key] - value).abs().max())
        else:
            assert torch.equal(w2[key], value), key
