"""Process-group setup from torchrun's environment and the few collectives training needs.

Single-process runs need none of this: every helper degrades to a no-op when no process group is
initialised, so library code calls them unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from reidflow.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str | None  # None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {name}={raw!r}: expected an integer (set by torchrun)"
        ) from exc


def current() -> DistInfo:
    """The state of the default process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=_env_int("LOCAL_RANK", 0),
            backend=str(dist.get_backend()),
        )
    return DistInfo(rank=0, world_size=1, local_rank=0, backend=None)


def init_distributed(backend: str | None = None, timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK, ...).

    Backend: ``nccl`` when CUDA is available, ``gloo`` otherwise. With WORLD_SIZE unset or 1 no
    group is created. On CUDA the process is bound to ``cuda:LOCAL_RANK``. Idempotent.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, backend=None)
    rank = _env_int("RANK", -1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ConfigError(
            f"environment: RANK={rank} must be in [0, WORLD_SIZE={world_size}) (launch with torchrun)"
        )
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise ConfigError(f"environment variable {var} is not set; launch distributed runs with torchrun")
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if chosen == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=chosen, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )
    return current()


def shutdown_distributed() -> None:
    """Destroy the default process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(backend: str | None = None) -> Iterator[DistInfo]:
    """``with distributed_session() as info:`` init from env, always destroy the group at the end."""
    created = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(backend)
    try:
        yield info
    finally:
        if created:
            shutdown_distributed()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ranks (a new tensor; the input is unchanged)."""
    out = values.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_reduce_grads_mean(params: Sequence[torch.Tensor]) -> None:
    """Average ``.grad`` of ``params`` over ranks in place (for forwards that bypassed DDP)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of ``module`` from rank ``src`` to all ranks."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


def gather_objects(obj: Any) -> list[Any]:
    """All ranks' ``obj`` (JSON-like values/tensors) in rank order, on every rank.

    Uses the process group's object transport between our own processes (never data from disk).
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def has_trainable_parameters(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def wrap_ddp(
    module: nn.Module,
    device: torch.device,
    *,
    sync_bn: bool,
    find_unused_parameters: bool,
) -> nn.Module:
    """DistributedDataParallel around a module with trainable parameters (optionally SyncBN first).

    SyncBN conversion replaces BN children in place (same Parameter objects, so optimizers stay
    valid) and returns the converted root. SyncBN is CUDA-only in PyTorch; asking for it with CPU
    DDP is a configuration error rather than a silent fallback, because the whole point is that
    results must not depend on the number of processes.
    """
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("engine.sync_bn=true needs CUDA (PyTorch SyncBatchNorm does not run on CPU)")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
