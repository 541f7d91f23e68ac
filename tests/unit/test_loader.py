"""Index-based datasets and loaders (0 and 2 workers), eval order under DDP, shard streaming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from reidflow.data.index import ShardIndex
from reidflow.data.loader import (
    IndexedImageDataset,
    make_eval_loader,
    make_train_loader,
)
from reidflow.data.opener import LocalOpener
from reidflow.data.sample import Sample
from reidflow.data.sampling import IdentityBatchSampler, SequentialSampler
from reidflow.data.shards import write_shards
from reidflow.errors import DataError

H, W = 32, 16


def _colour(domain: str, pid: int, camid: int) -> tuple[int, int, int]:
    """Each image is one flat colour that encodes its labels, so a wrong row shows in the pixels."""
    return (20 + 20 * pid, 40 + 60 * camid, 60 if domain == "alpha" else 200)


def _write_dataset(tmp_path: Path, domain: str) -> Path:
    root = tmp_path / f"raw_{domain}"
    root.mkdir()
    samples = []
    for i in range(18):
        pid, camid = i // 3, i % 2
        split = "train" if pid < 4 else "query"
        name = f"{pid:04d}_c{camid}_{i:03d}.jpg"
        # Sizes differ from H x W so the loader really resizes.
        Image.new("RGB", (24 + 2 * (i % 3), 50), _colour(domain, pid, camid)).save(root / name, quality=95)
        samples.append(Sample(name, pid, camid, domain, split))
    return write_shards(samples, tmp_path / "shards", domain, root, shard_max_bytes=20_480).dataset_dir


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ShardIndex:
    tmp_path = tmp_path_factory.mktemp("loader")
    return ShardIndex.load([_write_dataset(tmp_path, "alpha"), _write_dataset(tmp_path, "beta")])


def _check_items(index: ShardIndex, dataset: IndexedImageDataset, batch: dict) -> None:
    labels = dataset.labels
    for j, row in enumerate(batch["index"].tolist()):
        image = batch["image"][j]
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert batch["pid"][j] == labels[row] and batch["camid"][j] == index.camids[row]
        domain = index.domains[row]
        assert batch["domain"][j] == index.domain_names.index(domain)
        expected = torch.tensor(
            _colour(domain, int(index.pids[row]), int(index.camids[row])), dtype=torch.float32
        )
        assert torch.allclose(image.float().mean(dim=(1, 2)), expected, atol=3.0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_yields_sampled_rows_with_their_labels(index: ShardIndex, num_workers: int) -> None:
    train = index.filter(split="train")
    dataset = IndexedImageDataset(train, LocalOpener(train.root), H, W)
    sampler = IdentityBatchSampler(dataset.labels, P=4, K=2, seed=0)
    loader = make_train_loader(dataset, sampler, num_workers=num_workers)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        expected = list(sampler)
        batches = list(loader)
        assert [b["index"].tolist() for b in batches] == expected
        for batch in batches:
            _check_items(train, dataset, batch)
    sampler.set_epoch(1)
    sampler.skip(1)
    assert [b["index"].tolist() for b in loader] == expected[1:]
    assert len(set(dataset.labels.tolist())) == 8  # 4 train ids in each of 2 domains, made global


@pytest.mark.parametrize("world_size", [1, 2])
def test_eval_loader_parts_merge_back_in_order(index: ShardIndex, world_size: int) -> None:
    dataset = IndexedImageDataset(index, LocalOpener(index.root), H, W)
    parts = []
    for rank in range(world_size):
        loader = make_eval_loader(dataset, batch_size=5, rank=rank, world_size=world_size)
        assert isinstance(loader.batch_sampler, SequentialSampler)
        batches = list(loader)
        for batch in batches:
            _check_items(index, dataset, batch)
        parts.append(torch.cat([b["index"] for b in batches]))
    assert SequentialSampler.merge(parts, len(dataset)).tolist() == list(range(len(dataset)))


def test_corrupt_member_error_names_the_sample(index: ShardIndex, tmp_path: Path) -> None:
    row = 3
    shard = index.root / index.shards[row]
    broken = tmp_path / "broken"
    broken.mkdir()
    data = bytearray(shard.read_bytes())
    start = int(index.offsets[row])
    data[start : start + int(index.sizes[row])] = bytes(int(index.sizes[row]))
    (broken / index.shards[row]).parent.mkdir(parents=True, exist_ok=True)
    (broken / index.shards[row]).write_bytes(bytes(data))
    dataset = IndexedImageDataset(index, LocalOpener(broken), H, W)
    with pytest.raises(DataError, match=index.keys[row]):
        dataset[row]
