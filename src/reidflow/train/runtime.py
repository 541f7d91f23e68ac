"""Devices, mixed precision, seeding and batches: the pure helpers of the training engine."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reidflow.errors import ConfigError


def derive_seed(seed: int, rank: int) -> int:
    """``seed`` on rank 0; an independent stream per other rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "engine.device='cuda' but CUDA is not available on this machine; use 'auto' or 'cpu'"
        )
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_amp(choice: str, device: torch.device) -> torch.dtype | None:
    if choice == "off":
        return None
    if device.type == "cpu":
        if choice == "fp16":
            raise ConfigError("engine.amp='fp16' needs CUDA; use 'bf16' (or 'off') on CPU")
        return torch.bfloat16 if choice == "bf16" else None
    bf16_ok = torch.cuda.is_bf16_supported()
    if choice == "bf16" and not bf16_ok:
        raise ConfigError(
            f"engine.amp='bf16' but {torch.cuda.get_device_name(device)} has no bf16 support; use fp16"
        )
    if choice == "auto":
        return torch.bfloat16 if bf16_ok else torch.float16
    return torch.bfloat16 if choice == "bf16" else torch.float16


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in (nested) dicts/lists/tuples to ``device``; pinned tensors copy asynchronously."""
    if isinstance(batch, Tensor):
        if batch.device == device:
            return batch
        return batch.to(device, non_blocking=device.type == "cuda" and batch.is_pinned())
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """Leading dimension of the first tensor found in the batch (0 when there is none)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = (
        batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else []
    )
    for value in values:
        size = batch_size_of(value)
        if size:
            return size
    return 0
