"""MoCo's contrastive loss with a FIFO queue of keys (He et al. 2020), as MMT+ uses it on target
samples: query = the online net's feature, key = its own mean net's feature of the same image.

The queue is an ``nn.Module`` whose state is three buffers (``keys``, ``ptr``, ``filled``), so the
engine checkpoints it with the weights and a resumed run continues with the same queue. Only the
``filled`` entries are negatives (an empty queue contributes none). Under ``torch.distributed`` the
keys of all processes are gathered in rank order before they are enqueued, so every process holds
the queue a single process with the whole batch would hold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reidflow.errors import ConfigError


class MoCoQueue(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ConfigError(f"MoCoQueue: size and dim must be >= 1, got size={size}, dim={dim}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("keys", torch.zeros(self.size, self.dim))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(1, dtype=torch.long))

    def negatives(self) -> torch.Tensor:
        """The keys currently held (``filled`` × dim; order irrelevant to the loss)."""
        return self.keys[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, gather: bool = True) -> None:
        """Append ``keys`` (N×dim, L2-normalized here), overwriting the oldest entries when full."""
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ConfigError(f"MoCoQueue.enqueue: expected N×{self.dim} keys, got {tuple(keys.shape)}")
        keys = F.normalize(keys.detach().float(), dim=1)
        if gather:
            keys = _gather_rows(keys)
        if keys.shape[0] > self.size:  # only the newest `size` survive
            keys = keys[-self.size :]
        n, ptr = keys.shape[0], int(self.ptr)
        positions = (ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[positions] = keys.to(self.keys.dtype)
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def moco_loss(
    query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE: ``-log exp(q·k/T) / (exp(q·k/T) + Σ_n exp(q·n/T))`` over L2-normalized vectors, mean
    over the batch; ``key`` and ``negatives`` are constants."""
    if temperature <= 0:
        raise ConfigError(f"moco_loss: temperature must be > 0, got {temperature}")
    if query.shape != key.shape or query.dim() != 2:
        raise ConfigError(
            f"moco_loss: query {tuple(query.shape)} and key {tuple(key.shape)} must be the same N×D"
        )
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.detach().float(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ negatives.detach().float().t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
