"""Datasets and DataLoaders that decode shard members into fixed-size uint8 tensors.

Workers do only deterministic work -- read bytes, decode, resize -- so a resumed run reproduces the
exact pixels; random augmentation runs batched in the main process (:mod:`reidflow.data.transforms`).
Every loader yields the same dict per sample: ``image`` (uint8 ``3 x height x width``), ``pid``
(global identity label, see :func:`reidflow.data.index.global_pids`), ``camid`` (per domain),
``domain`` (position in :attr:`ShardIndex.domain_names`) and ``index`` (row of the index).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from reidflow.data.index import ShardIndex
from reidflow.data.opener import Opener
from reidflow.data.sampling import SequentialSampler
from reidflow.errors import ConfigError, DataError

RESAMPLE = Image.Resampling.BILINEAR


def decode_resized(data: bytes, height: int, width: int, name: str = "<bytes>") -> np.ndarray:
    """Decode an image to RGB and resize it to ``height x width`` -> ``H x W x 3`` uint8.

    JPEGs use ``Image.draft`` (DCT-domain downscale to the smallest scale still >= the target),
    which is deterministic and much cheaper for large crops.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (width, height))
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name}: cannot decode image ({exc})") from exc
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), RESAMPLE)
    return np.asarray(rgb)


def _image_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ConfigError(f"image size {height}x{width}: expected positive height and width")


class IndexedImageDataset(Dataset):
    """Random access to the images of a :class:`ShardIndex` by (shard, offset, size).

    ``labels`` overrides the identity labels (default: global labels of the index's domains/pids).
    """

    def __init__(
        self,
        index: ShardIndex,
        opener: Opener,
        height: int,
        width: int,
        labels: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        _check_size(height, width)
        if len(index) == 0:
            raise DataError(f"shard index under {index.root}: expected at least one row, got none")
        self.index = index
        self.opener = opener
        self.height = height
        self.width = width
        self.labels = index.global_pids()[0] if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels.shape != (len(index),):
            raise ConfigError(f"labels: expected {len(index)} values (one per row), got {self.labels.shape}")
        self.camids = index.camids
        self.domain_ids = index.domain_ids

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        data = self.index.read_image_bytes(i, self.opener)
        array = decode_resized(data, self.height, self.width, name=self.index.keys[i])
        return {
            "image": _image_tensor(array),
            "pid": int(self.labels[i]),
            "camid": int(self.camids[i]),
            "domain": int(self.domain_ids[i]),
            "index": int(i),
        }


def reopen_worker_handles(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give the worker its own file handles."""
    info = get_worker_info()
    opener = getattr(info.dataset, "opener", None) if info is not None else None
    reopen = getattr(opener, "reopen", None)
    if callable(reopen):
        reopen()


def make_train_loader(
    dataset: Dataset,
    batch_sampler: Iterable[list[int]],
    num_workers: int = 2,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """Loader driven by one of the batch samplers of :mod:`reidflow.data.sampling`.

    The sampler stays in the main process, so ``set_epoch``/``skip`` on it take effect at the next
    ``iter(loader)`` even with persistent workers.
    """
    if num_workers < 0:
        raise ConfigError(f"num_workers={num_workers}: expected >= 0")
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=reopen_worker_handles if num_workers > 0 else None,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )


def make_eval_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Ordered loader over this rank's contiguous part (see :class:`SequentialSampler`).

    ``loader.batch_sampler`` is the :class:`SequentialSampler`; use its ``merge`` to put gathered
    per-rank outputs back in dataset order.
    """
    sampler = SequentialSampler(len(dataset), batch_size, rank=rank, world_size=world_size)
    return make_train_loader(dataset, sampler, num_workers=num_workers, pin_memory=pin_memory)
