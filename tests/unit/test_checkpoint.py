"""Checkpoints: pickle-free codec, weights with tied/non-contiguous tensors, optimizer/RNG state, atomicity."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reidflow.errors import ArtifactError, ConfigError
from reidflow.train import checkpoint as ck
from reidflow.train.optim import SchedulerConfig, build_scheduler

torch.set_num_threads(1)


class Tied(nn.Module):
    """Tied weights (one Parameter under two names), a non-contiguous buffer and BN buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(4, 6, bias=False)
        self.out = nn.Linear(6, 4, bias=False)
        self.out.weight = nn.Parameter(self.emb.weight.t().contiguous())
        self.dec = nn.Linear(4, 6, bias=False)
        self.dec.weight = self.emb.weight  # tied
        self.bn = nn.BatchNorm1d(6)
        self.register_buffer("proj", torch.randn(6, 4).t())  # non-contiguous view
        self.register_buffer("empty", torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.emb(x))) + x @ self.proj @ self.proj.t()


def make_state(iteration: int, module: nn.Module, **kw) -> ck.TrainingState:
    return ck.TrainingState(
        iteration=iteration, epoch=0, batch_in_epoch=iteration, modules={"net": module}, **kw
    )


def test_codec_round_trips_nested_python_numpy_and_tensors() -> None:
    value = {
        "ints": {1: "a", 2: (3, 4.5)},
        "arr": np.arange(5, dtype=np.uint32),
        "np_scalar": np.float64(2.5),
        "t": [torch.arange(3, dtype=torch.int64), torch.ones(2, dtype=torch.bfloat16)],
        "none": None,
        "nan": float("nan"),
        "tuple_key": {(1, 2): True},
    }
    tensors: dict[str, torch.Tensor] = {}
    encoded = ck.encode_state(value, tensors)
    text = json.dumps(encoded)  # JSON-able
    back = ck.decode_state(json.loads(text), tensors)
    assert back["ints"] == {1: "a", 2: (3, 4.5)}
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2, 3, 4]
    assert back["np_scalar"] == 2.5 and back["none"] is None and np.isnan(back["nan"])
    assert torch.equal(back["t"][0], torch.arange(3)) and back["t"][1].dtype == torch.bfloat16
    assert back["tuple_key"] == {(1, 2): True}


def test_codec_refuses_objects_it_would_have_to_pickle() -> None:
    with pytest.raises(ArtifactError, match=r"cannot store a object at 'extra.queue'"):
        ck.encode_state({"extra": {"queue": object()}}, {})


def test_weights_round_trip_with_tied_and_non_contiguous_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Tied()
    net(torch.randn(5, 4))  # non-trivial BN running stats
    path = ck.save_checkpoint(tmp_path, make_state(3, net))
    assert {p.suffix for p in path.iterdir()} == {".safetensors", ".json"}  # nothing pickled

    torch.manual_seed(1)
    fresh = Tied()
    ckpt = ck.load_checkpoint(path)
    ck.restore(ckpt, {"net": fresh}, {}, {})
    for (k, a), (_, b) in zip(net.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    assert fresh.dec.weight is fresh.emb.weight  # still tied after loading
    assert ckpt.iteration == 3 and ckpt.batch_in_epoch == 3


def adamw_and_sgd(net: nn.Module) -> dict[str, torch.optim.Optimizer]:
    return {
        "adamw": torch.optim.AdamW(net.emb.parameters(), lr=1e-2, betas=(0.8, 0.9)),
        "sgd": torch.optim.SGD(list(net.bn.parameters()) + [net.out.weight], lr=0.1, momentum=0.9),
    }


def train_steps(net: nn.Module, optimizers: dict[str, torch.optim.Optimizer], steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = net(torch.randn(8, 4, generator=g)).pow(2).mean()
        for opt in optimizers.values():
            opt.zero_grad()
        loss.backward()
        for opt in optimizers.values():
            opt.step()


def test_optimizer_scheduler_and_scaler_state_resume_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Tied()
    opts = adamw_and_sgd(net)
    sched = build_scheduler(opts["sgd"], SchedulerConfig(kind="cosine", unit="iter", total=20), 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train_steps(net, opts, 3, seed=1)
    for _ in range(3):
        sched.step()
    path = ck.save_checkpoint(
        tmp_path, make_state(3, net, optimizers=opts, schedulers={"sgd": sched}, scaler=scaler)
    )
    train_steps(net, opts, 2, seed=2)
    expected = {k: v.clone() for k, v in net.state_dict().items()}

    torch.manual_seed(5)
    other = Tied()
    other_opts = adamw_and_sgd(other)
    other_sched = build_scheduler(other_opts["sgd"], SchedulerConfig(kind="cosine", unit="iter", total=20), 1)
    other_scaler = torch.amp.GradScaler("cpu")
    ck.restore(ck.load_checkpoint(path), {"net": other}, other_opts, {"sgd": other_sched}, other_scaler)
    assert other_opts["adamw"].param_groups[0]["betas"] == (0.8, 0.9)  # tuple again, not a JSON list
    assert other_sched.last_epoch == 3 and other_scaler.get_scale() == 1024.0
    assert other_opts["sgd"].param_groups[0]["lr"] == pytest.approx(sched.get_last_lr()[0])
    train_steps(other, other_opts, 2, seed=2)
    for key, value in other.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_rng_state_capture_and_restore_replays_all_generators(tmp_path: Path) -> None:
    net = nn.Linear(1, 1)
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = ck.capture_rng_state()
    path = ck.save_checkpoint(tmp_path, make_state(1, net, rng_states=[state]))
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ck.restore_rng_state(ck.load_checkpoint(path).rng_states[0])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_failed_save_leaves_no_partial_checkpoint_and_keeps_latest(tmp_path: Path) -> None:
    net = nn.Linear(2, 2)
    good = ck.save_checkpoint(tmp_path, make_state(1, net))
    with pytest.raises(ArtifactError, match="cannot store"):
        ck.save_checkpoint(tmp_path, make_state(2, net, extra_state={"bad": object()}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good.name, "latest"])
    assert ck.latest_checkpoint(tmp_path) == good


def test_keep_last_latest_pointer_and_overwrite(tmp_path: Path) -> None:
    net = nn.Linear(2, 2)
    for it in range(1, 6):
        ck.save_checkpoint(tmp_path, make_state(it, net), keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == [
        ck.checkpoint_dir_name(4),
        ck.checkpoint_dir_name(5),
    ]
    assert ck.latest_checkpoint(tmp_path).name == ck.checkpoint_dir_name(5)
    # a resumed run reaching an iteration again replaces that checkpoint atomically
    with torch.no_grad():
        net.weight.fill_(7.0)
    again = ck.save_checkpoint(tmp_path, make_state(4, net), keep_last=2)
    assert ck.latest_checkpoint(tmp_path) == again
    assert torch.all(ck.load_checkpoint(again).module_states["net"]["weight"] == 7.0)
    (tmp_path / "latest").unlink()
    assert ck.latest_checkpoint(tmp_path).name == ck.checkpoint_dir_name(5)  # falls back to the newest
    assert ck.latest_checkpoint(tmp_path / "nothing-here") is None


def test_broken_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    net = nn.Linear(2, 2)
    path = ck.save_checkpoint(tmp_path, make_state(1, net))
    with pytest.raises(ArtifactError, match=r"model-net.safetensors: does not fit module 'net'"):
        ck.restore(ck.load_checkpoint(path), {"net": nn.Linear(3, 2)}, {}, {})
    with pytest.raises(
        ArtifactError, match=r"holds modules \['net'\] but the training method has \['model'\]"
    ):
        ck.restore(ck.load_checkpoint(path), {"model": net}, {}, {})
    (path / "model-net.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="model-net.safetensors: not a readable safetensors file"):
        ck.load_checkpoint(path)
    (tmp_path / "latest").write_text("ckpt-404\n")
    with pytest.raises(ArtifactError, match="names ckpt-404"):
        ck.latest_checkpoint(tmp_path)
    with pytest.raises(ArtifactError, match="state.json: missing"):
        ck.load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="module name 'a/b'"):
        ck.save_checkpoint(tmp_path, ck.TrainingState(2, 0, 2, modules={"a/b": net}))


def test_folders_of_a_writer_killed_mid_save_are_removed(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    stale = tmp_path / f".tmp-ckpt-00000004-{gone.pid}-{host}"
    stale.mkdir()
    (stale / "model-net.safetensors").write_bytes(b"half")
    live = tmp_path / f".tmp-ckpt-00000004-{os.getpid()}-{host}"  # this process: still running
    live.mkdir()
    other_host = tmp_path / f".trash-ckpt-00000002-{gone.pid}-elsewhere"  # cannot be checked from here
    other_host.mkdir()
    ck.save_checkpoint(tmp_path, make_state(1, nn.Linear(2, 2)))
    assert not stale.exists() and live.exists() and other_host.exists()
