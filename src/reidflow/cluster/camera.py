"""Camera-centred features: take each camera's mean feature away before clustering.

On targets whose cameras differ strongly in colour and exposure, a source-trained encoder's features
group by camera first: DBSCAN then finds clusters that are almost all one camera, and the pseudo
identities teach the nets nothing about matching across cameras. Subtracting each camera's mean
feature (then re-normalizing) removes that shared per-camera offset. Camera ids are capture metadata
that every re-ID layout carries, not identity labels, so this stays unsupervised. docs/methods/mmt.md
has the measurement that motivated it.
"""

from __future__ import annotations

import numpy as np

from reidflow.errors import DataError


def center_per_camera(features: np.ndarray, camids: np.ndarray) -> np.ndarray:
    """N×D features minus their camera's mean feature, L2-normalized again (float32)."""
    x = np.asarray(features, dtype=np.float64)
    cams = np.asarray(camids)
    if cams.shape != (x.shape[0],):
        raise DataError(f"center_per_camera: {cams.shape[0]} camera ids for {x.shape[0]} features")
    out = x.copy()
    for cam in np.unique(cams):
        rows = cams == cam
        out[rows] -= x[rows].mean(axis=0)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(np.float32)
