"""k-reciprocal re-ranking: agreement with the dense reference, a hand-checked case, usefulness."""

from __future__ import annotations

import numpy as np
import pytest

from reidflow.errors import ConfigError, DataError
from reidflow.eval.metrics import evaluate_rank
from reidflow.eval.reference import k_reciprocal_reference
from reidflow.eval.rerank import k_reciprocal, k_reciprocal_from_features, squared_euclidean


def _distances(q: np.ndarray, g: np.ndarray):
    return squared_euclidean(q, g), squared_euclidean(q, q), squared_euclidean(g, g)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (7, 1, 0.0), (12, 3, 0.8)])
def test_matches_dense_reference_on_random_data(k1: int, k2: int, lam: float) -> None:
    rng = np.random.default_rng(k1)
    q = rng.normal(size=(60, 16)).astype(np.float32)
    g = rng.normal(size=(240, 16)).astype(np.float32)
    q_g, q_q, g_g = _distances(q, g)
    expected = k_reciprocal_reference(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    got = k_reciprocal(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (60, 240) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4
    from_features = k_reciprocal_from_features(q, g, k1=k1, k2=k2, lambda_value=lam)
    assert np.abs(from_features - expected).max() <= 1e-4


def test_matches_reference_on_asymmetric_distances() -> None:
    # Column normalization (not row) matters once the matrices are not symmetric.
    rng = np.random.default_rng(4)
    q_g = rng.random((30, 90)).astype(np.float32)
    q_q, g_g = rng.random((30, 30)).astype(np.float32), rng.random((90, 90)).astype(np.float32)
    np.fill_diagonal(q_q, 0.0)
    np.fill_diagonal(g_g, 0.0)
    expected = k_reciprocal_reference(q_g, q_q, g_g, k1=10, k2=4)
    assert np.abs(k_reciprocal(q_g, q_q, g_g, k1=10, k2=4) - expected).max() <= 1e-4


def test_fewer_items_than_k1_behaves_like_the_dense_version() -> None:
    rng = np.random.default_rng(8)
    q, g = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    q_g, q_q, g_g = _distances(q, g)
    expected = k_reciprocal_reference(q_g, q_q, g_g, k1=20, k2=15)
    assert np.abs(k_reciprocal(q_g, q_q, g_g, k1=20, k2=15) - expected).max() <= 1e-4


def test_hand_checkable_two_pairs() -> None:
    # 1-D points: q0 = 0, q1 = 10, g0 = 0.1, g1 = 10.1. With k1 = 1 every item's 2 nearest items
    # are itself and its partner, so each V row covers {self, partner} and the two pairs share no
    # neighbour: Jaccard(q0, g1) = Jaccard(q1, g0) = 1 exactly.
    q = np.array([[0.0], [10.0]], dtype=np.float32)
    g = np.array([[0.1], [10.1]], dtype=np.float32)
    q_g, q_q, g_g = _distances(q, g)
    jaccard_only = k_reciprocal(q_g, q_q, g_g, k1=1, k2=1, lambda_value=0.0)
    assert jaccard_only[0, 1] == 1.0 and jaccard_only[1, 0] == 1.0
    # Within a pair the weights are ~(0.5, 0.5) for both rows, so the Jaccard distance is ~0.
    assert jaccard_only[0, 0] < 1e-3 and jaccard_only[1, 1] < 1e-3
    # lambda = 1 keeps the original distance: q_g / max of the query's column of M.
    # Column of q0 holds squared distances 0, 100, 0.01, 102.01 -> 0.01 / 102.01.
    original_only = k_reciprocal(q_g, q_q, g_g, k1=1, k2=1, lambda_value=1.0)
    assert original_only[0, 0] == pytest.approx(0.01 / 102.01, rel=1e-3)
    assert original_only[0, 1] == pytest.approx(102.01 / 102.01, rel=1e-3)


def _clustered_case(seed: int, num_ids: int, noise: float, separation: float = 1.0):
    rng = np.random.default_rng(seed)
    per_id = 10
    centers = separation * rng.normal(size=(num_ids, 16))
    pids = np.repeat(np.arange(num_ids), per_id)
    feats = (centers[pids] + noise * rng.normal(size=(len(pids), 16))).astype(np.float32)
    slot = np.tile(np.arange(per_id), num_ids)
    cams, is_query = slot % 3, slot < 2
    q, g = feats[is_query], feats[~is_query]
    labels = (pids[is_query], pids[~is_query], cams[is_query], cams[~is_query])
    return _distances(q, g), labels


def test_reranking_keeps_map_on_two_clear_clusters() -> None:
    (q_g, q_q, g_g), labels = _clustered_case(0, num_ids=2, noise=0.5, separation=10.0)
    before = evaluate_rank(q_g, *labels)["mAP"]
    after = evaluate_rank(k_reciprocal(q_g, q_q, g_g, k1=6, k2=3), *labels)["mAP"]
    assert before == pytest.approx(1.0)
    assert after >= before - 1e-12


def test_reranking_improves_map_on_noisy_identity_clusters() -> None:
    # 30 identities x 10 images; noise puts some other identities between an image and its own
    # cluster's far members; shared neighbourhoods recover them.
    (q_g, q_q, g_g), labels = _clustered_case(0, num_ids=30, noise=0.7)
    before = evaluate_rank(q_g, *labels)["mAP"]
    after = evaluate_rank(k_reciprocal(q_g, q_q, g_g, k1=8, k2=3), *labels)["mAP"]
    assert before < 0.9
    assert after > before + 0.05


def test_bad_inputs() -> None:
    q_g, q_q, g_g = np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((3, 3))
    with pytest.raises(DataError, match="g_g_dist"):
        k_reciprocal(q_g, q_q, np.zeros((2, 2)))
    with pytest.raises(DataError, match="at least one query"):
        k_reciprocal(np.zeros((0, 3)), np.zeros((0, 0)), g_g)
    with pytest.raises(ConfigError, match="lambda_value"):
        k_reciprocal(q_g, q_q, g_g, k1=1, lambda_value=1.5)
    with pytest.raises(DataError, match="feature size"):
        k_reciprocal_from_features(np.zeros((2, 3)), np.zeros((2, 4)))


def test_collapsed_features_do_not_fail_reranking():
    from reidflow.eval.rerank import k_reciprocal

    q_g, q_q, g_g = np.zeros((3, 5), np.float32), np.zeros((3, 3), np.float32), np.zeros((5, 5), np.float32)
    out = k_reciprocal(q_g, q_q, g_g, k1=2, k2=1)
    assert out.shape == (3, 5) and np.isfinite(out).all()


def test_distance_kind_squared_is_used_as_given_euclidean_is_squared_first() -> None:
    """The porting contract: ``re_ranking(d)`` of other toolkits squares d; so does distance='euclidean'."""
    rng = np.random.default_rng(11)
    q = rng.normal(size=(20, 8)).astype(np.float32)
    g = rng.normal(size=(70, 8)).astype(np.float32)
    squared = _distances(q, g)
    plain = tuple(np.sqrt(d) for d in squared)
    expected = k_reciprocal_reference(*squared, k1=10, k2=3)  # the published algorithm on squared distances

    assert np.abs(k_reciprocal(*squared, k1=10, k2=3) - expected).max() <= 1e-4
    assert np.abs(k_reciprocal(*squared, k1=10, k2=3, distance="squared") - expected).max() <= 1e-4
    assert np.abs(k_reciprocal(*plain, k1=10, k2=3, distance="euclidean") - expected).max() <= 1e-4
    # handing plain distances over as if squared changes the numbers: the argument is not cosmetic
    assert np.abs(k_reciprocal(*plain, k1=10, k2=3) - expected).max() > 1e-3
    with pytest.raises(ConfigError, match=r"distance: expected one of \['squared', 'euclidean'\]"):
        k_reciprocal(*squared, distance="cosine")
