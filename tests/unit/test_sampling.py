"""Batch samplers: P×K composition, domain balance, camera diversity, DDP splits, epochs, resume."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from reidflow.data.sampling import (
    CameraAwareBatchSampler,
    DomainBalancedBatchSampler,
    IdentityBatchSampler,
    SequentialSampler,
)
from reidflow.errors import ConfigError


def _labels(seed: int = 0, identities: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uneven identity sizes (1..9 images), 1-4 cameras each, two domains of unequal size."""
    rng = np.random.default_rng(seed)
    pids, camids, domains = [], [], []
    for pid in range(identities):
        count = int(rng.integers(1, 10))
        cameras = int(rng.integers(1, 5))
        pids += [pid] * count
        camids += [i % cameras for i in range(count)]
        domains += ["source_a" if pid < identities * 2 // 3 else "source_b"] * count
    order = rng.permutation(len(pids))  # rows of an identity are not contiguous in real indexes
    return np.array(pids)[order], np.array(camids)[order], np.array(domains)[order]


PIDS, CAMIDS, DOMAINS = _labels()


def _make(kind: str, rank: int = 0, world_size: int = 1, seed: int = 3, **kw):
    if kind == "identity":
        return IdentityBatchSampler(PIDS, P=4, K=4, seed=seed, rank=rank, world_size=world_size, **kw)
    if kind == "camera":
        return CameraAwareBatchSampler(
            PIDS, CAMIDS, P=4, K=4, seed=seed, rank=rank, world_size=world_size, **kw
        )
    if kind == "domain":
        return DomainBalancedBatchSampler(
            PIDS, DOMAINS, ids_per_domain=4, K=2, seed=seed, rank=rank, world_size=world_size, **kw
        )
    raise AssertionError(kind)


def test_identity_batches_are_p_ids_times_k_images() -> None:
    sampler = _make("identity")
    batches = list(sampler)
    assert len(batches) == len(sampler) == 24 // 4  # one epoch visits each identity once
    seen = Counter()
    for batch in batches:
        pids = PIDS[batch].reshape(4, 4)
        assert (pids == pids[:, :1]).all() and len(set(pids[:, 0])) == 4
        seen.update(pids[:, 0].tolist())
        for group in np.asarray(batch).reshape(4, 4):
            available = int((PIDS == PIDS[group[0]]).sum())
            assert len(set(group.tolist())) == min(available, 4)  # replacement only when needed
    assert seen == Counter({pid: 1 for pid in range(24)})


def test_longer_epochs_keep_identities_distinct_per_batch() -> None:
    sampler = _make("identity", num_batches=20)
    batches = list(sampler)
    assert len(batches) == 20
    assert all(len(set(PIDS[b].tolist())) == 4 for b in batches)


def test_domain_balanced_batches() -> None:
    sampler = _make("domain")
    slices = sampler.domain_slices
    assert list(slices) == ["source_a", "source_b"]
    # source_a has 16 identities -> 4 batches; source_b (8) is recycled.
    assert len(sampler) == 4
    for batch in sampler:
        assert len(batch) == 2 * 4 * 2
        for name, part in slices.items():
            rows = np.asarray(batch[part])
            assert set(DOMAINS[rows]) == {name}
            pids = PIDS[rows].reshape(4, 2)
            assert (pids == pids[:, :1]).all() and len(set(pids[:, 0])) == 4


def test_camera_aware_batches_spread_cameras() -> None:
    sampler = _make("camera")
    checked = 0
    for batch in sampler:
        for group in np.asarray(batch).reshape(4, 4):
            pid = PIDS[group[0]]
            assert (PIDS[group] == pid).all()
            cameras_available = len(set(CAMIDS[PIDS == pid]))
            assert len(set(CAMIDS[group])) == min(cameras_available, 4)
            checked += cameras_available > 1
    assert checked > 0


@pytest.mark.parametrize("kind", ["identity", "camera", "domain"])
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ddp_ranks_partition_the_global_batch(kind: str, world_size: int) -> None:
    single = list(_make(kind))
    ranks = [_make(kind, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [list(s) for s in ranks]
    assert {len(s) for s in ranks} == {len(single)}
    assert {len(batches) for batches in per_rank} == {len(single)}
    for step, global_batch in enumerate(single):
        parts = [batches[step] for batches in per_rank]
        assert {len(p) for p in parts} == {len(global_batch) // world_size}
        assert sorted(i for part in parts for i in part) == sorted(global_batch)
        identity_sets = [set(PIDS[p].tolist()) for p in parts]
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not identity_sets[a] & identity_sets[b]
        if kind == "domain":  # every rank's batch is domain-balanced on its own
            for rank, part in zip(ranks, parts):
                for name, positions in rank.domain_slices.items():
                    assert set(DOMAINS[np.asarray(part[positions])]) == {name}


def test_set_epoch_is_deterministic_and_reshuffles() -> None:
    a, b = _make("identity"), _make("identity")
    a.set_epoch(2)
    b.set_epoch(2)
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    first = list(a)
    np.random.seed(999)
    random.seed(999)
    torch.manual_seed(999)
    assert list(b) == first == list(a)  # same epoch, same batches; global RNGs are irrelevant
    b.set_epoch(3)
    assert list(b) != first
    assert list(_make("identity", seed=4)) != list(_make("identity", seed=3))


@pytest.mark.parametrize("kind", ["identity", "camera", "domain"])
def test_skip_resumes_mid_epoch_until_the_next_epoch(kind: str) -> None:
    sampler = _make(kind, rank=1, world_size=2)
    sampler.set_epoch(5)
    full = list(sampler)
    sampler.skip(3)
    assert list(sampler) == full[3:]
    assert len(sampler) == len(full)
    assert list(sampler) == full[3:]  # a multi-worker DataLoader iterates its sampler twice
    sampler.set_epoch(5)
    assert list(sampler) == full  # set_epoch clears the skip
    sampler.skip(len(full))
    assert list(sampler) == []
    with pytest.raises(ConfigError, match="skip"):
        sampler.skip(len(full) + 1)


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("num_samples", [1, 10, 13])
def test_sequential_sampler_splits_and_merges_in_order(world_size: int, num_samples: int) -> None:
    samplers = [SequentialSampler(num_samples, 3, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({len(s) for s in samplers}) == 1
    outputs = []
    for sampler in samplers:
        rows = [i for batch in sampler for i in batch]
        assert len(rows) == sampler.per_rank
        assert sampler.num_valid + sampler.num_padded == sampler.per_rank
        assert rows[: sampler.num_valid] == list(range(sampler.start, sampler.stop))
        outputs.append(torch.tensor(rows) * 10)  # a per-row "feature" computed by this rank
    assert sum(s.num_valid for s in samplers) == num_samples
    merged = SequentialSampler.merge(outputs, num_samples)
    assert merged.tolist() == [10 * i for i in range(num_samples)]
    assert SequentialSampler.merge([o.numpy() for o in outputs], num_samples).tolist() == merged.tolist()
    samplers[0].skip(1)
    assert list(samplers[0]) == list(SequentialSampler(num_samples, 3, 0, world_size))[1:]


def test_invalid_parameters_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="divisible by world_size=4"):
        IdentityBatchSampler(PIDS, P=6, K=4, seed=0, rank=0, world_size=4)
    with pytest.raises(ConfigError, match="rank=2"):
        IdentityBatchSampler(PIDS, P=4, K=4, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="only 24 identities"):
        IdentityBatchSampler(PIDS, P=32, K=4, seed=0)
    with pytest.raises(ConfigError, match="domain 'source_b' has only 8"):
        DomainBalancedBatchSampler(PIDS, DOMAINS, ids_per_domain=10, K=2, seed=0)
    with pytest.raises(ConfigError, match="camids"):
        CameraAwareBatchSampler(PIDS, CAMIDS[:-1], P=4, K=4, seed=0)
    with pytest.raises(ConfigError, match="K=0"):
        IdentityBatchSampler(PIDS, P=4, K=0, seed=0)


def test_iter_captures_epoch_and_skip_when_called() -> None:
    sampler = _make("identity")
    sampler.set_epoch(1)
    sampler.skip(2)
    iterator = iter(sampler)
    sampler.set_epoch(2)  # later changes affect the next iteration, not this one
    reference = _make("identity")
    reference.set_epoch(1)
    assert list(iterator) == list(reference)[2:]
    assert list(sampler) == list(_make("identity", num_batches=None).global_batches(epoch=2))
