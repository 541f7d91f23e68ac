"""Batch samplers over index arrays: identity P×K, domain-balanced, camera-aware, sequential.

All samplers yield lists of dataset row indices and share one interface the training engine relies
on: ``set_epoch``, ``skip``, ``__iter__``, ``__len__``.

DDP scheme (the same for every P×K sampler): every rank builds the same *global* batch plan from
``numpy.random.default_rng((seed, epoch))`` -- no global RNG is touched -- and takes its own
contiguous block of identities from each global batch. With P identities per batch and world size
W, rank r gets identities ``[r·P/W, (r+1)·P/W)``, each with its K images, so every rank batch is
itself a (P/W)×K batch (batch-hard triplet mining works per rank), ranks never share an identity
within a step, every rank has the same number of batches, and the union over ranks is exactly the
single-process global batch for the same seed. P (or ``ids_per_domain``) must be divisible by W.

Epoch length is defined by identities: one epoch visits every identity once (``n_ids // P``
batches; the ``n_ids % P`` identities left over by the epoch's permutation wait for the next epoch).
``num_batches`` overrides it (e.g. iteration-based schedules); longer epochs chain further
permutations, so identities are still distinct inside each batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch

from reidflow.errors import ConfigError


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ConfigError(f"sampler parameter {name}={value!r}: expected a positive integer")


def _check_ddp(rank: int, world_size: int, divisible: int, name: str) -> None:
    _check_positive(world_size=world_size)
    if not 0 <= rank < world_size:
        raise ConfigError(f"sampler rank={rank}: expected 0 <= rank < world_size={world_size}")
    if divisible % world_size:
        raise ConfigError(
            f"sampler {name}={divisible} must be divisible by world_size={world_size} "
            "(each rank takes an equal share of the identities of every global batch)"
        )


def _as_1d(name: str, values: Sequence | np.ndarray, length: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or len(array) == 0:
        raise ConfigError(f"sampler {name}: expected a non-empty 1-D array, got shape {array.shape}")
    if length is not None and len(array) != length:
        raise ConfigError(f"sampler {name}: expected {length} values (one per sample), got {len(array)}")
    return array


def _members(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct labels (sorted) and, for each, the ascending row indices holding it."""
    unique, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(unique)))[:-1]
    return unique, np.split(order, bounds)


def _identity_groups(rng: np.random.Generator, count: int, group: int, num_groups: int) -> np.ndarray:
    """``num_groups`` groups of ``group`` distinct positions in ``range(count)``.

    Successive permutations are chopped into whole groups; a permutation's leftover is dropped.
    """
    per_permutation = count // group
    groups: list[np.ndarray] = []
    while len(groups) < num_groups:
        permutation = rng.permutation(count)
        groups.extend(permutation[: per_permutation * group].reshape(per_permutation, group))
    return np.stack(groups[:num_groups]) if groups else np.zeros((0, group), dtype=np.int64)


def _pick_random(rng: np.random.Generator, members: np.ndarray, k: int) -> np.ndarray:
    """K images of one identity; with replacement only when it has fewer than K."""
    return rng.choice(members, size=k, replace=len(members) < k)


class _EpochBatchSampler:
    """``set_epoch``/``skip`` bookkeeping shared by every sampler here."""

    def __init__(self, seed: int, rank: int, world_size: int) -> None:
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose deterministic plan the next ``__iter__`` yields (and clear any skip)."""
        if epoch < 0:
            raise ConfigError(f"sampler epoch={epoch}: expected >= 0")
        self.epoch = int(epoch)
        self._skip = 0

    def skip(self, num_batches: int) -> None:
        """Make iterations of the current epoch start after its first ``num_batches`` batches.

        Used to resume mid-epoch; holds until the next :meth:`set_epoch`, because a multi-worker
        DataLoader iterates its batch sampler twice when it starts (a one-shot skip would be spent
        on the first, discarded iterator). ``__len__`` keeps reporting the full epoch length.
        """
        if not 0 <= num_batches <= len(self):
            raise ConfigError(f"sampler skip({num_batches}): expected 0 <= num_batches <= {len(self)}")
        self._skip = int(num_batches)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch))

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


class _GroupedPKSampler(_EpochBatchSampler):
    """Global plan of shape (batches, groups, ids per group, K); ranks split the ids axis."""

    def __init__(self, ids_per_group: int, k: int, seed: int, rank: int, world_size: int) -> None:
        super().__init__(seed, rank, world_size)
        self.k = k
        self.ids_per_group = ids_per_group
        self.ids_per_rank = ids_per_group // world_size

    def global_plan(self, epoch: int | None = None) -> np.ndarray:
        """The plan every rank derives for ``epoch`` (default: the current one)."""
        saved = self.epoch
        if epoch is not None:
            self.epoch = epoch
        try:
            return self._plan(self._rng())
        finally:
            self.epoch = saved

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The single-process batches of ``epoch``: what the ranks' batches add up to."""
        plan = self.global_plan(epoch)
        return [batch.reshape(-1).tolist() for batch in plan]

    def __iter__(self) -> Iterator[list[int]]:
        # Eager (not a generator): the epoch and skip in effect when iter() is called are used.
        start = self._skip
        plan = self._plan(self._rng())
        low = self.rank * self.ids_per_rank
        mine = plan[start:, :, low : low + self.ids_per_rank, :]
        return iter([batch.reshape(-1).tolist() for batch in mine])

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class IdentityBatchSampler(_GroupedPKSampler):
    """P identities × K images per global batch (``pids`` must be global identity labels)."""

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray,
        P: int,
        K: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> None:
        _check_positive(P=P, K=K)
        _check_ddp(rank, world_size, P, "P")
        super().__init__(P, K, seed, rank, world_size)
        self.pids = _as_1d("pids", pids)
        self.identities, self.members = _members(self.pids)
        if len(self.identities) < P:
            raise ConfigError(f"sampler P={P}: only {len(self.identities)} identities are available")
        self.num_batches = len(self.identities) // P if num_batches is None else int(num_batches)
        _check_positive(num_batches=self.num_batches)

    def __len__(self) -> int:
        return self.num_batches

    def _choose(self, rng: np.random.Generator, identity: int) -> np.ndarray:
        return _pick_random(rng, self.members[identity], self.k)

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        groups = _identity_groups(rng, len(self.identities), self.ids_per_group, self.num_batches)
        plan = np.empty((self.num_batches, 1, self.ids_per_group, self.k), dtype=np.int64)
        for b, group in enumerate(groups):
            for j, identity in enumerate(group):
                plan[b, 0, j] = self._choose(rng, identity)
        return plan


class CameraAwareBatchSampler(IdentityBatchSampler):
    """Like :class:`IdentityBatchSampler`, but an identity's K images span as many cameras as it has.

    Images are drawn round-robin over the identity's cameras (camera order and images within a
    camera shuffled); identities with fewer than K images repeat that cycle. ``camids`` may be per
    domain: identities are global, so an identity's cameras all belong to one domain.
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray,
        camids: Sequence[int] | np.ndarray,
        P: int,
        K: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> None:
        super().__init__(pids, P, K, seed, rank, world_size, num_batches)
        self.camids = _as_1d("camids", camids, len(self.pids))
        self.members_by_camera = []
        for members in self.members:
            _, per_camera = _members(self.camids[members])
            self.members_by_camera.append([members[rows] for rows in per_camera])

    def _choose(self, rng: np.random.Generator, identity: int) -> np.ndarray:
        per_camera = self.members_by_camera[identity]
        shuffled = [rng.permutation(per_camera[c]) for c in rng.permutation(len(per_camera))]
        depth = max(len(images) for images in shuffled)
        interleaved = [images[i] for i in range(depth) for images in shuffled if i < len(images)]
        return np.resize(np.asarray(interleaved, dtype=np.int64), self.k)


class DomainBalancedBatchSampler(_GroupedPKSampler):
    """Every global batch holds ``ids_per_domain`` identities × K images from *each* domain.

    Batches are ordered by domain (sorted domain labels); :attr:`domain_slices` tells which
    positions of a rank's batch belong to which domain. Each rank gets ``ids_per_domain / W``
    identities of every domain, so rank batches are domain-balanced too. The epoch length is set by
    the domain with most identities (``max_d n_ids_d // ids_per_domain``); smaller domains start
    fresh permutations when exhausted. ``pids`` must be global labels (unique across domains).
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray,
        domains: Sequence[Hashable] | np.ndarray,
        ids_per_domain: int,
        K: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> None:
        _check_positive(ids_per_domain=ids_per_domain, K=K)
        _check_ddp(rank, world_size, ids_per_domain, "ids_per_domain")
        super().__init__(ids_per_domain, K, seed, rank, world_size)
        self.pids = _as_1d("pids", pids)
        self.domains = _as_1d("domains", domains, len(self.pids))
        self.domain_names, rows_per_domain = _members(self.domains)
        self.identity_members: list[list[np.ndarray]] = []
        for name, rows in zip(self.domain_names.tolist(), rows_per_domain):
            _, per_id = _members(self.pids[rows])
            if len(per_id) < ids_per_domain:
                raise ConfigError(
                    f"sampler ids_per_domain={ids_per_domain}: domain {name!r} has only "
                    f"{len(per_id)} identities"
                )
            self.identity_members.append([rows[m] for m in per_id])
        longest = max(len(m) for m in self.identity_members)
        self.num_batches = longest // ids_per_domain if num_batches is None else int(num_batches)
        _check_positive(num_batches=self.num_batches)

    @property
    def images_per_domain(self) -> int:
        """Images of each domain in one rank's batch."""
        return self.ids_per_rank * self.k

    @property
    def domain_slices(self) -> dict[Hashable, slice]:
        """Domain label -> positions of its images in every batch this rank yields."""
        n = self.images_per_domain
        return {name: slice(d * n, (d + 1) * n) for d, name in enumerate(self.domain_names.tolist())}

    def __len__(self) -> int:
        return self.num_batches

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        plan = np.empty(
            (self.num_batches, len(self.domain_names), self.ids_per_group, self.k), dtype=np.int64
        )
        for d, members in enumerate(self.identity_members):
            groups = _identity_groups(rng, len(members), self.ids_per_group, self.num_batches)
            for b, group in enumerate(groups):
                for j, identity in enumerate(group):
                    plan[b, d, j] = _pick_random(rng, members[identity], self.k)
        return plan


class SequentialSampler(_EpochBatchSampler):
    """Ordered batches for feature extraction, split by rank into contiguous, equal-length parts.

    Rank r covers rows ``[r·n, (r+1)·n)`` with ``n = ceil(num_samples / W)``; ranks running past the
    end are padded by repeating the last row, so every rank yields the same number of batches.
    Concatenating the ranks' outputs in rank order and keeping the first ``num_samples`` rows
    (:meth:`merge`) restores the original order exactly.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        _check_positive(num_samples=num_samples, batch_size=batch_size)
        _check_ddp(rank, world_size, world_size, "world_size")  # any num_samples splits (padding)
        super().__init__(0, rank, world_size)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.per_rank = -(-self.num_samples // self.world_size)
        self.start = min(self.rank * self.per_rank, self.num_samples)
        self.stop = min(self.start + self.per_rank, self.num_samples)

    @property
    def num_valid(self) -> int:
        """Rows of this rank that are real (the rest of its ``per_rank`` rows are padding)."""
        return self.stop - self.start

    @property
    def num_padded(self) -> int:
        return self.per_rank - self.num_valid

    def indices(self) -> list[int]:
        """This rank's ``per_rank`` row indices, padding included."""
        return list(range(self.start, self.stop)) + [self.num_samples - 1] * self.num_padded

    @staticmethod
    def merge(parts: Sequence, num_samples: int) -> np.ndarray | torch.Tensor:
        """Concatenate per-rank results (array-likes with ``per_rank`` rows each) and drop padding."""
        if not parts:
            raise ConfigError("SequentialSampler.merge: expected one part per rank, got none")
        if isinstance(parts[0], torch.Tensor):
            return torch.cat(list(parts))[:num_samples]
        return np.concatenate([np.asarray(p) for p in parts])[:num_samples]

    def __len__(self) -> int:
        return (self.per_rank + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        start = self._skip
        rows = self.indices()
        size = self.batch_size
        return iter([rows[b * size : (b + 1) * size] for b in range(start, len(self))])
