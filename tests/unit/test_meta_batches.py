"""MetaBIN's meta batches: a pure function of the iteration, domain-balanced, split across ranks,
and identical whether decoded in the training process or prefetched by workers (also after a jump)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from reidflow.data.meta_batches import DomainBalancedBatches
from reidflow.errors import ConfigError

# 3 domains x 5 identities x 3 images; global pids 0..14
PIDS = np.repeat(np.arange(15), 3)
DOMAINS = PIDS // 5


class RowImages(Dataset):
    """Image ``i`` is filled with ``i`` (so a batch's pixels tell which rows it holds)."""

    def __len__(self) -> int:
        return len(PIDS)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 4, 2), float(i)), "pid": int(PIDS[i]), "domain": 0, "index": i}


def batches(**kw) -> DomainBalancedBatches:
    return DomainBalancedBatches(RowImages(), PIDS, DOMAINS, ids_per_domain=2, K=2, seed=3, **kw)


def rows_of(batch: dict) -> list[int]:
    return batch["image"][:, 0, 0, 0].long().tolist()


def test_batch_is_a_function_of_the_iteration_and_domain_balanced():
    a, b = batches(), batches()
    for t in (0, 1, 7, 2, 30):
        first, again = a(t), b(t)
        assert rows_of(first) == rows_of(again) == a.rows(t).tolist()
        assert torch.equal(first["pid"], torch.from_numpy(PIDS[a.rows(t)]))
        counts = torch.bincount(first["domain"], minlength=3).tolist()
        assert counts == [4, 4, 4], "2 ids x 2 images from every domain"
    assert rows_of(a(0)) != rows_of(a(1))


def test_ranks_split_every_domain_and_add_up_to_the_global_batch():
    whole = batches()
    ranks = [
        DomainBalancedBatches(RowImages(), PIDS, DOMAINS, 2, 2, seed=3, rank=r, world_size=2) for r in (0, 1)
    ]
    for t in (0, 5):
        parts = [set(rows_of(r(t))) for r in ranks]
        assert not parts[0] & parts[1]
        assert parts[0] | parts[1] == set(rows_of(whole(t)))
        assert torch.bincount(ranks[0](t)["domain"], minlength=3).tolist() == [2, 2, 2]


def test_prefetching_workers_give_the_same_batches_also_after_a_jump():
    direct, prefetched = batches(), batches(num_workers=1)
    for t in [0, 1, 2, 3, 10, 11, 2, 3]:  # sequential, a jump ahead (resume), a jump back
        got, want = prefetched(t), direct(t)
        assert rows_of(got) == rows_of(want)
        assert torch.equal(got["pid"], want["pid"]) and torch.equal(got["domain"], want["domain"])


def test_bad_worker_count():
    with pytest.raises(ConfigError, match="num_workers=-1"):
        batches(num_workers=-1)
