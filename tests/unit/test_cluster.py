"""Pseudo labels: the sparse k-reciprocal Jaccard against a dense reference written here from the
definition (including ties and duplicate points), DBSCAN on sparse distances against DBSCAN on the
dense matrix, order independence of the core-point partition, adaptive eps, centroids, metrics and
one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from reidflow.cluster import (
    PseudoLabelConfig,
    adaptive_eps,
    cluster_centroids,
    clustering_metrics,
    dbscan_labels,
    jaccard_distance,
    nearest_neighbours,
    pseudo_labels,
)
from reidflow.cluster.neighbours import approximate_neighbours
from reidflow.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------------
# the dense reference: the definition, item by item, with N×N arrays


def dense_distances(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return np.maximum(2.0 - 2.0 * x64 @ x64.T, 0.0)


def dense_jaccard(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    num = len(x)
    dist = dense_distances(x)
    rank = np.argsort(dist, axis=1, kind="stable")  # ties: lower index first
    k1 = min(k1, num - 1)

    def reciprocal(i: int, k: int) -> list[int]:
        return [int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    half = int(np.around(k1 / 2.0))
    v = np.zeros((num, num))
    for i in range(num):
        core = reciprocal(i, k1)
        members = set(core)
        for c in core:
            cand = reciprocal(c, half)
            if len(set(cand) & set(core)) > 2.0 / 3.0 * len(cand):
                members |= set(cand)
        idx = np.array(sorted(members))
        w = np.exp(-dist[i, idx])
        v[i, idx] = w / w.sum()
    k2 = min(k2, num)
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(num)])
    out = np.ones((num, num))
    for i in range(num):
        for j in range(num):
            s = np.minimum(v[i], v[j]).sum()
            out[i, j] = max(1.0 - s / (2.0 - s), 0.0)
    return out


def lattice_points(num: int, dim: int = 16, seed: int = 0, duplicates: int = 0) -> np.ndarray:
    """±1/4 entries in 16-d: unit vectors whose dot products are exact, so distances tie exactly."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-0.25, 0.25], size=(num, dim)).astype(np.float32)
    if duplicates:
        x[-duplicates:] = x[rng.integers(0, num - duplicates, duplicates)]
    return x


def clustered(num: int, ids: int, dim: int = 32, noise: float = 0.35, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ids, dim))
    labels = rng.integers(0, ids, num)
    x = centers[labels] + noise * rng.normal(size=(num, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def densify(matrix: sp.csr_matrix) -> np.ndarray:
    """Missing entries are distance 1."""
    out = np.ones(matrix.shape)
    coo = matrix.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


# ------------------------------------------------------------------------------------------------
# the sparse Jaccard equals the dense reference


@pytest.mark.parametrize(
    ("num", "k1", "k2", "duplicates", "seed"),
    [(40, 5, 3, 0, 0), (60, 8, 4, 10, 1), (30, 20, 6, 6, 2), (12, 20, 6, 0, 3), (50, 4, 1, 5, 4)],
)
def test_sparse_jaccard_matches_dense_on_lattice_points_with_ties(
    num: int, k1: int, k2: int, duplicates: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("reidflow.cluster.neighbours.TILE", 16)  # several tiles, merged across
    x = lattice_points(num, seed=seed, duplicates=duplicates)
    d = dense_distances(x)
    assert len(np.unique(np.round(d, 9))) < 20  # many exact ties
    ours = jaccard_distance(x, k1, k2)
    np.testing.assert_allclose(densify(ours), dense_jaccard(x, k1, k2), atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_jaccard_matches_dense_on_random_clusters(seed: int) -> None:
    x, _ = clustered(80, 8, seed=seed)
    x[70:] = x[:10]  # duplicate points: distance 0 pairs must stay stored as explicit zeros
    ours = jaccard_distance(x, 10, 4)
    np.testing.assert_allclose(densify(ours), dense_jaccard(x, 10, 4), atol=1e-6, rtol=0)
    assert (ours.data <= 1e-12).sum() >= 80 + 20  # the diagonal and the duplicate pairs stay stored


@pytest.mark.parametrize("tile", [3, 7, 64])
def test_tiled_neighbours_equal_a_dense_stable_sort(tile: int) -> None:
    x = lattice_points(50, seed=7, duplicates=8)
    dist, idx = nearest_neighbours(x, 9, tile=tile)
    ref = np.argsort(dense_distances(x), axis=1, kind="stable")[:, :9]
    assert np.array_equal(idx, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(dense_distances(x), ref, axis=1), atol=1e-6)
    _, all_idx = nearest_neighbours(x[:5], 9, tile=tile)  # k capped at N
    assert all_idx.shape == (5, 5)


def test_nearest_neighbours_break_ties_by_index() -> None:
    x = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2, dtype=np.float32)
    _, idx = nearest_neighbours(x, 4)
    assert idx.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [3, 4, 0, 1], [3, 4, 0, 1]]


# ------------------------------------------------------------------------------------------------
# DBSCAN on the sparse matrix


def test_sparse_dbscan_equals_dense_dbscan() -> None:
    x, _ = clustered(200, 12, seed=5)
    x[190:] = x[:10]
    sparse = jaccard_distance(x, 20, 6)
    for eps in (0.3, 0.5, 0.6, 0.8):
        ours = dbscan_labels(sparse, eps, 4)
        ref = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit(densify(sparse)).labels_
        assert same_partition(ours.labels, ref), eps
        assert (ours.labels >= 0).sum() == (ref >= 0).sum()


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming, with -1 (outlier) the same in both."""
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = set(zip(a[a >= 0].tolist(), b[b >= 0].tolist(), strict=True))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def test_explicit_zero_distances_are_neighbours() -> None:
    # two duplicate pairs and a loner; only the zeros link points within eps
    rows, cols = np.array([0, 1, 2, 3]), np.array([1, 0, 3, 2])
    matrix = sp.csr_matrix((np.zeros(4), (rows, cols)), shape=(5, 5))
    assert matrix.nnz == 4
    out = dbscan_labels(matrix, 0.1, 2)
    assert out.labels.tolist() == [0, 0, 1, 1, -1]
    assert out.num_clusters == 2 and out.num_outliers == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_core_partition_does_not_depend_on_input_order(seed: int) -> None:
    x, _ = clustered(300, 15, noise=0.5, seed=seed)
    cfg = PseudoLabelConfig(k1=12, k2=4, eps=0.55, min_samples=4)
    first = pseudo_labels(x, cfg)
    perm = np.random.default_rng(seed + 10).permutation(len(x))
    second = pseudo_labels(x[perm], cfg)
    inverse = np.argsort(perm)
    core_first, core_second = first.core, second.core[inverse]
    assert np.array_equal(core_first, core_second)
    assert first.num_clusters == second.num_clusters > 1
    assert same_partition(first.labels[core_first], second.labels[inverse][core_first])


# ------------------------------------------------------------------------------------------------
# pseudo labels end to end, adaptive eps, k-means, centroids, metrics


def test_pseudo_labels_recover_clusters_and_metrics() -> None:
    x, truth = clustered(400, 10, noise=0.3, seed=3)
    out = pseudo_labels(x, PseudoLabelConfig())
    assert out.num_clusters == 10 and out.num_outliers == 0
    assert out.labels.min() == 0 and out.labels[0] == 0  # numbered by lowest member index
    m = clustering_metrics(out.labels, truth)
    assert m == {"outlier_fraction": 0.0, "purity": 1.0, "nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    cents = cluster_centroids(x, out.labels, out.num_clusters)
    assert cents.shape == (10, 32)
    np.testing.assert_allclose(np.linalg.norm(cents, axis=1), 1.0, atol=1e-6)
    members = x[out.labels == 3].mean(axis=0)
    np.testing.assert_allclose(cents[3], members / np.linalg.norm(members), atol=1e-6)


def test_metrics_of_a_mixed_clustering() -> None:
    pred = np.array([0, 0, 0, 1, 1, -1])
    true = np.array([5, 5, 7, 7, 7, 5])
    m = clustering_metrics(pred, true)
    assert m["purity"] == pytest.approx(4 / 5)
    assert m["outlier_fraction"] == pytest.approx(1 / 6)
    assert -1 <= m["ari"] < 1 and 0 <= m["nmi"] < 1


def test_adaptive_eps_equals_the_dense_rule() -> None:
    x, _ = clustered(150, 10, seed=4)
    x[140:] = x[:10]
    sparse = jaccard_distance(x, 20, 6)
    dense = densify(sparse)
    tri = np.triu(dense, 1)
    tri = np.sort(tri[np.nonzero(tri)], axis=None)  # the original MMT's rule on the dense matrix
    for rho in (1.6e-3, 0.01, 0.3):
        top = int(np.round(rho * tri.size))
        assert adaptive_eps(sparse, rho) == pytest.approx(tri[:top].mean(), rel=1e-12)
    cfg = PseudoLabelConfig(adaptive_eps_rho=0.01)
    out = pseudo_labels(x, cfg)
    assert out.eps == pytest.approx(adaptive_eps(sparse, 0.01))
    assert pseudo_labels(x, cfg, eps=0.5).eps == 0.5  # a later epoch reuses the epoch-0 value


def test_kmeans_option() -> None:
    x, truth = clustered(200, 5, noise=0.2, seed=6)
    out = pseudo_labels(x, PseudoLabelConfig(method="kmeans", num_clusters=5))
    assert out.num_clusters == 5 and out.num_outliers == 0
    assert clustering_metrics(out.labels, truth)["ari"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_clusters"):
        PseudoLabelConfig(method="kmeans")


# ------------------------------------------------------------------------------------------------
# one-line errors


def test_fewer_points_than_min_samples() -> None:
    x, _ = clustered(3, 2)
    with pytest.raises(DataError, match=r"3 target samples are fewer than min_samples=4") as err:
        pseudo_labels(x, PseudoLabelConfig(min_samples=4))
    assert "\n" not in str(err.value)


def test_every_point_an_outlier_is_a_clear_error() -> None:
    x = lattice_points(30, seed=9)  # no structure: with min_samples 25 nothing is dense
    with pytest.raises(DataError, match=r"all 30 samples are outliers \(eps=0.6, min_samples=25\)") as err:
        pseudo_labels(x, PseudoLabelConfig(min_samples=25, k1=5, k2=2))
    assert "\n" not in str(err.value)


def test_bad_features_and_settings() -> None:
    x, _ = clustered(20, 2)
    x[4, 1] = np.nan
    with pytest.raises(DataError, match="row 4 holds a NaN"):
        jaccard_distance(x)
    with pytest.raises(DataError, match="expected a non-empty N×D"):
        jaccard_distance(np.zeros(5))
    with pytest.raises(ConfigError, match="k1 must be >= 1"):
        jaccard_distance(clustered(20, 2)[0], k1=0)
    with pytest.raises(ConfigError, match=r"eps must be in \(0, 1\)"):
        dbscan_labels(sp.csr_matrix((4, 4)), 1.0, 2)


# ------------------------------------------------------------------------------------------------
# the approximate (faiss IVF) neighbour search for large N


def test_ivf_neighbours_are_close_to_exact_and_give_the_same_clusters() -> None:
    x, _ = clustered(3000, 60, dim=64, noise=0.4, seed=8)
    _, exact_i = nearest_neighbours(x, 21)
    approx_d, approx_i = approximate_neighbours(x, 21, nprobe=8)
    assert approx_i.shape == (3000, 21) and bool((approx_i >= 0).all())
    recall = np.mean([len(set(a) & set(b)) / 21 for a, b in zip(approx_i, exact_i, strict=True)])
    assert recall > 0.95
    assert np.all(np.diff(approx_d, axis=1) >= 0)  # ascending
    exact = pseudo_labels(x, PseudoLabelConfig())
    approx = pseudo_labels(x, PseudoLabelConfig(knn="ivf", ivf_nprobe=8))
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(exact.labels, approx.labels) > 0.99
    again = pseudo_labels(x, PseudoLabelConfig(knn="ivf", ivf_nprobe=8))
    assert np.array_equal(again.labels, approx.labels)  # deterministic
    with pytest.raises(ConfigError, match="knn must be 'exact' or 'ivf'"):
        jaccard_distance(x[:50], knn="hnsw")


def test_camera_centering_removes_a_per_camera_offset() -> None:
    """Two identities seen by two cameras whose style shifts every feature: plain clustering groups by
    camera, camera-centred clustering by identity."""
    from reidflow.cluster import center_per_camera

    rng = np.random.default_rng(0)
    ids, cams = np.repeat([0, 1], 20), np.tile(np.repeat([0, 1], 10), 2)
    identity = np.eye(8)[[0, 1]][ids] * 0.5
    camera = np.eye(8)[[2, 3]][cams] * 2.0
    x = identity + camera + 0.01 * rng.standard_normal((40, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cfg = PseudoLabelConfig(k1=10, k2=2, eps=0.5, min_samples=3)
    plain = pseudo_labels(x, cfg)
    centred = pseudo_labels(x, cfg.model_copy(update={"camera_centering": True}), camids=cams)
    assert clustering_metrics(plain.labels, cams)["purity"] == 1.0  # camera clusters
    assert clustering_metrics(centred.labels, ids)["purity"] == 1.0  # identity clusters...
    kept = centred.labels >= 0
    assert all(len(set(cams[kept & (centred.labels == c)])) == 2 for c in range(centred.num_clusters))
    y = center_per_camera(x, cams)
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0) and y.dtype == np.float32
    with pytest.raises(ConfigError, match="camera id"):
        pseudo_labels(x, cfg.model_copy(update={"camera_centering": True}))
    with pytest.raises(DataError, match="camera ids for 40 features"):
        center_per_camera(x, cams[:5])
