"""Ensembles of several models' features and the distances evaluation uses.

The VisDA post-processing: per model, flip-averaged L2-normalized features; concatenate (optionally
weighted); L2-normalize again. Distances are squared Euclidean on unit vectors (``2 - 2·cos``), the
convention k-reciprocal re-ranking was defined on. Camera correction subtracts λ times the distance
between the camera model's features: ``d = d_reid - λ·d_cam`` (a pair that looks like "same camera"
is probably not the same person seen by another camera, so the re-ID distance is corrected for it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reidflow.errors import ConfigError
from reidflow.eval.features import l2_normalize


def concat_features(parts: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted concatenation of per-model L2-normalized features, L2-normalized again."""
    if not parts:
        raise ConfigError("ensemble: expected features of at least one model")
    rows = {p.shape[0] for p in parts}
    if len(rows) != 1:
        raise ConfigError(f"ensemble: every model must embed the same images; got row counts {sorted(rows)}")
    if weights is None:
        weights = [1.0] * len(parts)
    if len(weights) != len(parts) or any(w < 0 for w in weights):
        raise ConfigError(f"ensemble weights {list(weights)}: expected {len(parts)} non-negative numbers")
    stacked = np.concatenate(
        [l2_normalize(p) * float(w) for p, w in zip(parts, weights, strict=True)], axis=1
    )
    return l2_normalize(stacked)


def sq_euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows (float32, clamped at 0)."""
    a = a.astype(np.float32, copy=False)
    b = b.astype(np.float32, copy=False)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0, out=d)


def camera_corrected(d_reid: np.ndarray, d_cam: np.ndarray, lam: float) -> np.ndarray:
    if d_reid.shape != d_cam.shape:
        raise ConfigError(f"camera correction: distance shapes differ {d_reid.shape} vs {d_cam.shape}")
    return (d_reid - lam * d_cam).astype(np.float32)
