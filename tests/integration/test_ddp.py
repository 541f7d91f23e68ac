"""Two gloo ranks under torchrun train to the same weights as one process with the same global batch.

The DDP run is also cut short and resumed, so this covers rank-0 checkpointing, per-rank RNG state
and resume under DDP too. Why the model has no BatchNorm: see ddp_worker.py.
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

from reidflow.train import checkpoint as ckpt_io

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = Path(sys.executable).parent / "torchrun"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def torchrun(*args: str) -> None:
    run(
        [
            str(TORCHRUN),
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            str(WORKER),
            *args,
        ]
    )


@pytest.mark.integration
def test_ddp_on_two_ranks_matches_one_process_and_resumes(tmp_path: Path) -> None:
    run(
        [
            sys.executable,
            str(WORKER),
            "--out",
            str(tmp_path / "single"),
            "--ckpt",
            str(tmp_path / "ck-single"),
        ]
    )
    torchrun("--out", str(tmp_path / "ddp-a"), "--ckpt", str(tmp_path / "ck-ddp"), "--max-iters", "5")
    torchrun("--out", str(tmp_path / "ddp-b"), "--ckpt", str(tmp_path / "ck-ddp"), "--resume")

    single = json.loads((tmp_path / "single" / "result.json").read_text())
    first = json.loads((tmp_path / "ddp-a" / "result.json").read_text())
    second = json.loads((tmp_path / "ddp-b" / "result.json").read_text())
    assert single["world_size"] == 1 and single["wrapper"] == "Sequential"
    assert first["world_size"] == 2 and first["wrapper"] == "DistributedDataParallel"
    assert (first["start"], first["final"], second["start"], second["final"]) == (0, 5, 5, 18)
    assert single["final"] == 18 and single["samples"] == 18 * 16
    assert first["samples"] == 5 * 16  # both ranks' samples are counted

    ddp_history = second["history"]  # a resumed run's history holds the whole run (kept in the checkpoint)
    assert ddp_history[: len(first["history"])] == first["history"]
    assert [r["iteration"] for r in ddp_history] == [r["iteration"] for r in single["history"]]
    for ours, ref in zip(ddp_history, single["history"]):
        assert ours["loss"] == pytest.approx(ref["loss"], abs=1e-5)  # mean over ranks = full-batch loss
        assert ours["lr/sgd"] == pytest.approx(ref["lr/sgd"], rel=1e-12)
        assert ours["rank"] == 0.5  # metrics are averaged over the two ranks

    ref_weights = load_file(tmp_path / "single" / "weights.safetensors")
    ddp_weights = load_file(tmp_path / "ddp-b" / "weights.safetensors")
    assert ref_weights.keys() == ddp_weights.keys()
    for key, value in ref_weights.items():
        assert torch.allclose(ddp_weights[key], value, atol=1e-5, rtol=0), (
            key,
            (ddp_weights[key] - value).abs().max(),
        )
    assert not torch.equal(
        ref_weights["0.weight"], load_file(tmp_path / "ddp-a" / "weights.safetensors")["0.weight"]
    )

    saved = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "ck-ddp"))
    assert saved.iteration == 18 and len(saved.rng_states) == 2  # one RNG state per rank
    assert not torch.equal(saved.rng_states[0]["torch"], saved.rng_states[1]["torch"])


# fast checks of the distributed helpers that need no second process


def test_init_distributed_reads_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from reidflow.errors import ConfigError
    from reidflow.train.distributed import all_reduce_mean, init_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert torch.equal(all_reduce_mean(torch.tensor([1.0, 3.0])), torch.tensor([1.0, 3.0]))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match=r"RANK=5 must be in \[0, WORLD_SIZE=2\)"):
        init_distributed()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK='x': expected an integer"):
        init_distributed()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        init_distributed()


def test_sync_bn_on_cpu_is_refused() -> None:
    from torch import nn

    from reidflow.errors import ConfigError
    from reidflow.train.distributed import wrap_ddp

    with pytest.raises(ConfigError, match="sync_bn=true needs CUDA"):
        wrap_ddp(
            nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)),
            torch.device("cpu"),
            sync_bn=True,
            find_unused_parameters=False,
        )
