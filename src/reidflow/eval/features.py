"""Feature extraction for evaluation: ordered, batched, optional flip-averaging and L2."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reidflow.data.index import ShardIndex
from reidflow.data.loader import IndexedImageDataset, make_eval_loader
from reidflow.data.opener import LocalOpener, Opener
from reidflow.data.transforms import Normalize, to_float_batch
from reidflow.errors import DataError


@dataclass
class Features:
    """Features of an index's rows in row order, with the labels evaluation needs."""

    features: np.ndarray  # N x D float32
    pids: np.ndarray
    camids: np.ndarray
    domains: np.ndarray  # object array of domain names
    keys: list[str]

    def take(self, rows: np.ndarray | Sequence[int]) -> Features:
        rows = np.asarray(rows, dtype=np.int64)
        return Features(
            self.features[rows],
            self.pids[rows],
            self.camids[rows],
            self.domains[rows],
            [self.keys[i] for i in rows],
        )


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


@torch.no_grad()
def extract(
    model: nn.Module,
    shards: ShardIndex | str | Path | Sequence[str | Path],
    *,
    height: int,
    width: int,
    batch_size: int = 128,
    flip: bool = True,
    normalize: bool = True,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    opener: Opener | None = None,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
) -> Features:
    """Run ``model`` (in eval mode) over every row of ``shards`` in order.

    ``flip`` averages the features of the image and its horizontal mirror (the VisDA recipe);
    ``normalize`` L2-normalizes the result. The model's mode is restored afterwards.
    """
    index = shards if isinstance(shards, ShardIndex) else ShardIndex.load(shards)
    if len(index) == 0:
        raise DataError(f"{index.root}: nothing to extract features from (empty index)")
    dataset = IndexedImageDataset(index, opener or LocalOpener(index.root), height, width, labels=index.pids)
    loader = make_eval_loader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    norm = Normalize(mean, std).to(device)
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    try:
        for batch in loader:
            x = norm(to_float_batch(batch["image"].to(device, non_blocking=True), height, width))
            feats = _forward(model, x)
            if flip:
                feats = (feats + _forward(model, torch.flip(x, dims=[3]))) / 2
            chunks.append(feats.float().cpu().numpy())
    finally:
        model.train(was_training)
    features = np.concatenate(chunks)[: len(index)].astype(np.float32)
    if normalize:
        features = l2_normalize(features)
    return Features(features, index.pids.copy(), index.camids.copy(), index.domains.copy(), list(index.keys))


def extract_with_meta(
    model: nn.Module,
    meta: dict[str, Any],
    shards: ShardIndex | str | Path | Sequence[str | Path],
    **options: Any,
) -> Features:
    """:func:`extract` at the input size and normalization a model artifact's ``model.json`` records."""
    return extract(
        model,
        shards,
        height=meta["input"]["height"],
        width=meta["input"]["width"],
        mean=tuple(meta["normalize"]["mean"]),
        std=tuple(meta["normalize"]["std"]),
        **options,
    )


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, dict):
        out = out.get("bn_features", out.get("features"))
    if out.ndim != 2:
        raise DataError(
            f"feature extraction: expected the model to return N x D features, got {tuple(out.shape)}"
        )
    return out
