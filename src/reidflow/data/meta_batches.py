"""Domain-balanced batches addressed by iteration: what MetaBIN's meta step draws at iteration ``t``.

Batch ``t`` is batch ``t mod n`` of epoch ``t div n`` of a :class:`DomainBalancedBatchSampler` plan
(``n`` = its batches per epoch), so it is a pure function of ``(seed, t)``: a resumed run draws
exactly the batches the uninterrupted one would have, with no sampler state in the checkpoint.
Under DDP each rank takes its share of the identities of every domain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reidflow.data.sampling import DomainBalancedBatchSampler
from reidflow.errors import ConfigError


class DomainBalancedBatches:
    """``batches(t) -> {"image", "pid", "domain"}``; ``domain`` holds the given domain labels."""

    def __init__(
        self,
        load: Callable[[int], dict[str, Any]],
        pids: Sequence[int] | np.ndarray,
        domains: Sequence[int] | np.ndarray,
        ids_per_domain: int,
        K: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.load = load
        self.domains = np.asarray(domains, dtype=np.int64)
        self.pids = np.asarray(pids, dtype=np.int64)
        self.sampler = DomainBalancedBatchSampler(
            self.pids, self.domains, ids_per_domain, K, seed, rank=rank, world_size=world_size
        )
        self._epoch: int | None = None
        self._plan: np.ndarray | None = None

    @property
    def num_domains(self) -> int:
        return len(self.sampler.domain_names)

    def rows(self, iteration: int) -> np.ndarray:
        """Dataset rows of this rank's batch at ``iteration``, grouped by domain."""
        if iteration < 0:
            raise ConfigError(f"meta batch iteration must be >= 0, got {iteration}")
        epoch, position = divmod(int(iteration), len(self.sampler))
        if epoch != self._epoch:
            self._plan, self._epoch = self.sampler.global_plan(epoch), epoch
        assert self._plan is not None
        width = self.sampler.ids_per_rank
        low = self.sampler.rank * width
        return self._plan[position, :, low : low + width, :].reshape(-1)

    def __call__(self, iteration: int) -> dict[str, Tensor]:
        rows = self.rows(iteration)
        images = torch.stack([self.load(int(r))["image"] for r in rows])
        return {
            "image": images,
            "pid": torch.from_numpy(self.pids[rows]),
            "domain": torch.from_numpy(self.domains[rows]),
        }
