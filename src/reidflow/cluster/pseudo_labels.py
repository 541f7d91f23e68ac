"""Pseudo labels from features: sparse Jaccard + DBSCAN (or k-means), centroids, quality metrics.

Usable on its own::

    labels = pseudo_labels(features, PseudoLabelConfig())      # features: N×D, L2-normalized
    centroids = cluster_centroids(features, labels.labels, labels.num_clusters)
    clustering_metrics(labels.labels, true_ids)                 # evaluation only

DBSCAN runs on the sparse precomputed Jaccard matrix (scikit-learn reads only stored entries as
candidate neighbours; stored zeros count, and every point is its own neighbour). A missing entry is
a distance of exactly 1, so with ``eps < 1`` the result equals DBSCAN on the dense matrix. Outliers
get label -1; clusters are numbered 0..C-1 by their lowest member index. If every point is an
outlier, :func:`pseudo_labels` raises a one-line :class:`~reidflow.errors.DataError` naming eps and
min_samples (there is no silent fallback: training on zero clusters would be meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field, model_validator

from reidflow.cluster.camera import center_per_camera
from reidflow.cluster.jaccard import jaccard_distance
from reidflow.cluster.neighbours import as_features
from reidflow.config import StrictModel
from reidflow.errors import ConfigError, DataError

ORIGINAL_MMT_EPS_RHO = 1.6e-3


class PseudoLabelConfig(StrictModel):
    """How target features become pseudo identities (docs/methods/mmt.md).

    ``adaptive_eps_rho``: when set, eps is not ``eps`` but chosen at the first clustering (epoch 0)
    as the original MMT does: the mean of the smallest ``rho`` fraction of the strictly positive
    pairwise distances (upper triangle; pairs sharing no neighbour count at distance 1); the value
    is then kept for later epochs (``PseudoLabels.eps`` carries it forward).

    ``knn``: ``exact`` (default; tiled, ties by index, N²·D/2 multiply-adds) or ``ivf`` (faiss
    inverted-file index probing ``ivf_nprobe`` of ``ivf_nlist`` cells: approximate neighbour lists,
    a fraction of the cost, for N in the hundreds of thousands).
    """

    method: Literal["dbscan", "kmeans"] = "dbscan"
    k1: int = Field(20, ge=1)
    k2: int = Field(6, ge=1)
    knn: Literal["exact", "ivf"] = Field(
        "exact", description="neighbour search: exact, or faiss IVF for large N"
    )
    ivf_nprobe: int = Field(16, ge=1)
    ivf_nlist: int | None = Field(None, ge=1, description="IVF cells (default round(sqrt(N)))")
    eps: float = Field(0.6, gt=0, lt=1)
    min_samples: int = Field(4, ge=1)
    adaptive_eps_rho: float | None = Field(None, gt=0, lt=1)
    num_clusters: int | None = Field(None, ge=1, description="k-means only: the number of clusters")
    kmeans_iters: int = Field(300, ge=1)
    seed: int = 0
    camera_centering: bool = Field(
        False,
        description="cluster camera-centred features (each camera's mean feature subtracted; "
        "reidflow.cluster.camera); needs the target's camera ids",
    )

    @model_validator(mode="after")
    def _check(self) -> PseudoLabelConfig:
        if self.method == "kmeans" and self.num_clusters is None:
            raise ValueError("method 'kmeans' needs num_clusters")
        return self


@dataclass
class PseudoLabels:
    labels: np.ndarray  # int64, N; -1 = outlier
    num_clusters: int
    core: np.ndarray  # bool, N: DBSCAN core points (every clustered point for k-means)
    eps: float | None = None  # the eps used (DBSCAN)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_outliers(self) -> int:
        return int((self.labels < 0).sum())


def _renumber(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Clusters numbered 0..C-1 by their lowest member index; -1 stays -1."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    clustered = labels >= 0
    if not clustered.any():
        return out, 0
    uniques, first = np.unique(labels[clustered], return_index=True)
    order = np.argsort(first, kind="stable")
    new_id = np.empty(uniques.size, dtype=np.int64)
    new_id[order] = np.arange(uniques.size)
    out[clustered] = new_id[np.searchsorted(uniques, labels[clustered])]
    return out, int(uniques.size)


def adaptive_eps(distances: sp.csr_matrix, rho: float = ORIGINAL_MMT_EPS_RHO) -> float:
    """The original MMT's eps: mean of the smallest ``rho`` fraction of the positive upper-triangle
    distances of the dense matrix, computed from the sparse one (missing entries are 1)."""
    num = distances.shape[0]
    upper = sp.triu(distances, k=1, format="coo")
    stored = upper.data
    positive = np.sort(stored[stored > 0])
    implicit_ones = num * (num - 1) // 2 - stored.size
    total = positive.size + implicit_ones
    take = int(np.round(rho * total))
    if take < 1:
        raise DataError(
            f"adaptive eps: rho={rho} of {total} positive pairwise distances selects none; raise rho or use "
            "a fixed eps"
        )
    from_stored = min(take, positive.size)
    return float((positive[:from_stored].sum() + (take - from_stored) * 1.0) / take)


def dbscan_labels(distances: sp.csr_matrix, eps: float, min_samples: int) -> PseudoLabels:
    """DBSCAN on a sparse precomputed distance matrix (missing = not a neighbour); see the module doc."""
    from sklearn.cluster import DBSCAN

    num = distances.shape[0]
    if not 0 < eps < 1:
        raise ConfigError(
            f"dbscan: eps must be in (0, 1) on Jaccard distances (a missing pair is at distance 1), got {eps}"
        )
    if num < min_samples:
        raise DataError(
            f"dbscan: {num} target samples are fewer than min_samples={min_samples}; no cluster can form"
        )
    # only pairs within eps can be neighbours: drop the rest (keeps stored zeros and the structure)
    close = distances.tocsr()
    keep = close.data <= eps
    indptr = np.concatenate([[0], np.cumsum(keep_per_row(close, keep))])
    close = sp.csr_matrix((close.data[keep], close.indices[keep], indptr), shape=close.shape)
    from sklearn.neighbors import sort_graph_by_row_values

    close = sort_graph_by_row_values(close, copy=False, warn_when_not_sorted=False)
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(close)
    labels, count = _renumber(model.labels_.astype(np.int64))
    core = np.zeros(num, dtype=bool)
    core[model.core_sample_indices_] = True
    return PseudoLabels(labels=labels, num_clusters=count, core=core, eps=float(eps))


def keep_per_row(matrix: sp.csr_matrix, keep: np.ndarray) -> np.ndarray:
    """How many entries of each CSR row are kept by the mask ``keep`` over ``matrix.data``."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    return np.bincount(rows[keep], minlength=matrix.shape[0])


def kmeans_labels(features: np.ndarray, num_clusters: int, seed: int = 0, iters: int = 300) -> PseudoLabels:
    """k-means on the features (original MMT's alternative); no outliers."""
    from sklearn.cluster import KMeans

    if features.shape[0] < num_clusters:
        raise DataError(
            f"kmeans: {features.shape[0]} target samples are fewer than num_clusters={num_clusters}"
        )
    model = KMeans(n_clusters=num_clusters, n_init=1, max_iter=iters, random_state=seed).fit(features)
    labels, count = _renumber(model.labels_.astype(np.int64))
    return PseudoLabels(labels=labels, num_clusters=count, core=np.ones(features.shape[0], dtype=bool))


def pseudo_labels(
    features: Any, cfg: PseudoLabelConfig, eps: float | None = None, camids: Any = None
) -> PseudoLabels:
    """Cluster ``features`` (N×D, L2-normalized). ``eps`` overrides the config's (the adaptive eps
    found at epoch 0 is passed back in later epochs). ``camids`` (N) are needed by
    ``cfg.camera_centering``."""
    x = as_features(features, "pseudo_labels")
    if cfg.camera_centering:
        if camids is None:
            raise ConfigError("pseudo_labels: camera_centering needs the camera id of every sample")
        x = center_per_camera(x, camids)
    if cfg.method == "kmeans":
        assert cfg.num_clusters is not None
        result = kmeans_labels(x, cfg.num_clusters, cfg.seed, cfg.kmeans_iters)
    else:
        if x.shape[0] < cfg.min_samples:
            raise DataError(
                f"pseudo_labels: {x.shape[0]} target samples are fewer than min_samples={cfg.min_samples}; "
                "no cluster can form"
            )
        distances = jaccard_distance(x, cfg.k1, cfg.k2, cfg.knn, cfg.ivf_nprobe, cfg.ivf_nlist)
        if eps is None:
            eps = adaptive_eps(distances, cfg.adaptive_eps_rho) if cfg.adaptive_eps_rho else cfg.eps
        result = dbscan_labels(distances, eps, cfg.min_samples)
        result.stats["stored_pairs"] = int(distances.nnz)
    if result.num_clusters == 0:
        raise DataError(
            f"pseudo_labels: all {x.shape[0]} samples are outliers (eps={result.eps}, "
            f"min_samples={cfg.min_samples}); raise eps or lower min_samples"
        )
    return result


def cluster_centroids(features: Any, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """C×D L2-normalized mean feature of each cluster (outliers ignored), for classifier rows."""
    x = as_features(features, "cluster_centroids")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (x.shape[0],):
        raise DataError(f"cluster_centroids: {labels.shape[0]} labels for {x.shape[0]} features")
    clustered = labels >= 0
    sums = np.zeros((num_clusters, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[clustered], x[clustered])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def clustering_metrics(labels: np.ndarray, true_labels: np.ndarray) -> dict[str, float]:
    """Purity, NMI and ARI of the clustered (non-outlier) samples against ``true_labels``, plus the
    outlier fraction. Evaluation only: true labels never reach training."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    true_labels = np.asarray(true_labels)
    if labels.shape != true_labels.shape:
        raise DataError(f"clustering_metrics: {labels.size} pseudo labels but {true_labels.size} true labels")
    clustered = labels >= 0
    out = {"outlier_fraction": float(1.0 - clustered.mean()) if labels.size else 0.0}
    if not clustered.any():
        return {**out, "purity": 0.0, "nmi": 0.0, "ari": 0.0}
    pred, true = labels[clustered], true_labels[clustered]
    _, true_ids = np.unique(true, return_inverse=True)
    table = sp.coo_matrix((np.ones(pred.size), (pred, true_ids))).tocsr()
    purity = float(table.max(axis=1).toarray().sum() / pred.size)
    return {
        **out,
        "purity": purity,
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
    }
