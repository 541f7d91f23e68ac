"""Domain-balanced batches addressed by iteration: what MetaBIN's meta step draws at iteration ``t``.

Batch ``t`` is batch ``t mod n`` of epoch ``t div n`` of a :class:`DomainBalancedBatchSampler` plan
(``n`` = its batches per epoch), so it is a pure function of ``(seed, t)``: a resumed run draws
exactly the batches the uninterrupted one would have, with no sampler state in the checkpoint.
Under DDP each rank takes its share of the identities of every domain.

With ``num_workers > 0`` the images are decoded ahead by DataLoader workers (the rows of iterations
t, t+1, ... are known in advance); a call for any other iteration than the next one (a resumed run)
restarts the prefetching there. Either way batch ``t`` holds the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from reidflow.data.loader import reopen_worker_handles
from reidflow.data.sampling import DomainBalancedBatchSampler
from reidflow.errors import ConfigError


class DomainBalancedBatches:
    """``batches(t) -> {"image", "pid", "domain"}``; ``domain`` holds the given domain labels."""

    def __init__(
        self,
        dataset: Dataset,
        pids: Sequence[int] | np.ndarray,
        domains: Sequence[int] | np.ndarray,
        ids_per_domain: int,
        K: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if num_workers < 0:
            raise ConfigError(f"meta batches: num_workers={num_workers}: expected >= 0")
        self.dataset = dataset
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self._prefetch: Iterator[dict[str, Any]] | None = None
        self._next_iteration = -1
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
        if self.num_workers == 0:
            rows = self.rows(iteration)
            images = torch.stack([self.dataset[int(r)]["image"] for r in rows])
        else:
            if self._prefetch is None or iteration != self._next_iteration:
                self._prefetch = iter(self._loader(iteration))
            batch = next(self._prefetch)
            self._next_iteration = iteration + 1
            rows, images = batch["index"].numpy(), batch["image"]
        return {
            "image": images,
            "pid": torch.from_numpy(self.pids[rows]),
            "domain": torch.from_numpy(self.domains[rows]),
        }

    def _loader(self, start: int) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_sampler=_RowsFrom(self, start),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=reopen_worker_handles,
            # its own generator: creating the loader must not draw from the global RNG, which drives
            # the augmentation (a resumed run restarts prefetching where the original did not)
            generator=torch.Generator().manual_seed(self.sampler.seed),
        )


class _RowsFrom:
    """The endless batch sampler ``rows(start), rows(start + 1), ...`` (iterated in the main process)."""

    def __init__(self, batches: DomainBalancedBatches, start: int) -> None:
        self.batches = batches
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        iteration = self.start
        while True:
            yield self.batches.rows(iteration).tolist()
            iteration += 1
