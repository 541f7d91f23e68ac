"""Ranking metrics: hand-computed cases, tie rule, skipped queries, chunking, and the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidflow.errors import ConfigError, DataError
from reidflow.eval.metrics import evaluate_rank
from reidflow.eval.reference import (
    evaluate_rank_reference,
    single_gallery_shot_cmc_reference,
    tpr_at_fpr_reference,
)

# Gallery shared by the hand-computed cases: (pid, camid) per index.
G_PIDS = np.array([2, 1, 1, 3, 1, 4])
G_CAMS = np.array([1, 0, 1, 1, 2, 1])


def test_hand_computed_two_queries() -> None:
    distmat = np.array(
        [
            # query 0: pid 1, cam 0. Index 1 is junk (pid 1, cam 0). Kept order by distance:
            # 3 (0.2), 2 (0.3, match), 0 (0.5), 5 (0.7), 4 (0.9, match) -> matches at ranks 2 and 5.
            # AP = (1/2 + 2/5) / 2 = 0.45, INP = 2/5 = 0.4, first match at rank 2.
            [0.5, 0.1, 0.3, 0.2, 0.9, 0.7],
            # query 1: pid 3, cam 0. Order: 5 (0.1), 4 (0.2), 0 (0.4), 3 (0.5, match) -> rank 4.
            # AP = 1/4, INP = 1/4.
            [0.4, 0.6, 0.8, 0.5, 0.2, 0.1],
        ],
        dtype=np.float32,
    )
    out = evaluate_rank(distmat, [1, 3], G_PIDS, [0, 0], G_CAMS, max_rank=6, topk_ap=3)
    # CMC: ranks 2 and 4 -> [0, 1/2, 1/2, 1, 1, 1]
    np.testing.assert_allclose(out["cmc"], [0.0, 0.5, 0.5, 1.0, 1.0, 1.0])
    assert out["mAP"] == pytest.approx((0.45 + 0.25) / 2)
    assert out["mINP"] == pytest.approx((0.4 + 0.25) / 2)
    # top-3 AP: query 0 keeps only the rank-2 match: (1/2) / min(2, 3) = 0.25; query 1: 0 / 1.
    assert out["mAP@3"] == pytest.approx((0.25 + 0.0) / 2)
    assert out["num_valid_queries"] == 2 and out["num_skipped_queries"] == 0


def test_junk_is_removed_not_counted_as_a_miss() -> None:
    # The junk item (index 1) is the nearest; were it kept, the match would be at rank 2 not 1.
    distmat = np.array([[0.9, 0.0, 0.1, 0.5, 0.8, 0.7]])
    out = evaluate_rank(distmat, [1], G_PIDS, [0], G_CAMS, max_rank=3)
    # kept order: 2 (match), 3, 5, 4 (match), 0 -> matches at ranks 1 and 4: AP = (1 + 2/4) / 2
    assert out["cmc"][0] == 1.0
    assert out["mAP"] == pytest.approx(0.75)
    assert out["mINP"] == pytest.approx(2 / 4)


def test_ties_follow_gallery_index_order() -> None:
    g_pids, g_cams = np.array([5, 1, 5, 1]), np.array([1, 1, 1, 1])
    flat = np.ones((1, 4), dtype=np.float32)
    out = evaluate_rank(flat, [1], g_pids, [0], g_cams, max_rank=4)
    # all tied: order 0, 1 (match), 2, 3 (match) -> AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4
    assert out["mAP"] == pytest.approx(0.5)
    assert out["mINP"] == pytest.approx(0.5)
    np.testing.assert_allclose(out["cmc"], [0, 1, 1, 1])
    swapped = evaluate_rank(flat, [1], g_pids[::-1].copy(), [0], g_cams, max_rank=4)
    # order 0 (match), 1, 2 (match), 3 -> AP = (1 + 2/3) / 2
    assert swapped["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert swapped["cmc"][0] == 1.0


def test_partial_ties_between_match_and_others() -> None:
    # distances 0.2 (pid 7, idx 0), 0.2 (match, idx 1), 0.1 (pid 8), 0.2 (match, idx 3)
    distmat = np.array([[0.2, 0.2, 0.1, 0.2]])
    out = evaluate_rank(distmat, [1], [7, 1, 8, 1], [0], [1, 1, 1, 1], max_rank=4)
    # order: 2, 0, 1 (match), 3 (match) -> AP = (1/3 + 2/4) / 2, INP = 2/4
    assert out["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert out["mINP"] == pytest.approx(0.5)


def test_skipped_queries_are_counted() -> None:
    distmat = np.random.default_rng(0).random((3, 6))
    # query 0 valid; query 1 pid 9 not in gallery; query 2 pid 3 only in its own camera (1).
    out = evaluate_rank(distmat, [1, 9, 3], G_PIDS, [0, 0, 1], G_CAMS)
    assert out["num_valid_queries"] == 1
    assert out["num_skipped_queries"] == 2
    only = evaluate_rank(distmat[:1], [1], G_PIDS, [0], G_CAMS)
    assert out["mAP"] == pytest.approx(only["mAP"])


def test_all_queries_skipped_is_an_error() -> None:
    with pytest.raises(DataError, match="none of the 2 queries"):
        evaluate_rank(np.zeros((2, 6)), [9, 3], G_PIDS, [0, 1], G_CAMS)


def test_cmc_longer_than_gallery_is_padded_with_ones() -> None:
    out = evaluate_rank(np.array([[0.3, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=5)
    np.testing.assert_allclose(out["cmc"], [0, 1, 1, 1, 1])


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(DataError, match="NaN"):
        evaluate_rank(np.array([[np.nan, 0.1]]), [1], [1, 2], [0], [1, 1])
    with pytest.raises(DataError, match="q_camids"):
        evaluate_rank(np.zeros((2, 2)), [1, 2], [1, 2], [0], [1, 1])
    with pytest.raises(DataError, match="expected shape"):
        evaluate_rank(np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1])
    with pytest.raises(DataError, match="expected 2 query rows"):
        evaluate_rank(iter([np.zeros((1, 2))]), [1, 2], [1, 2], [0, 0], [1, 1])
    with pytest.raises(ConfigError, match="max_rank"):
        evaluate_rank(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], max_rank=0)
    with pytest.raises(ConfigError, match="tpr_fprs"):
        evaluate_rank(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], tpr_fprs=[2.0])


def _random_case(rng: np.random.Generator, num_q: int, num_g: int, ties: bool):
    q_pids = rng.integers(0, 12, num_q)
    g_pids = rng.integers(0, 12, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    if ties:
        distmat = rng.integers(0, 5, (num_q, num_g)).astype(np.float32)
    else:
        distmat = rng.random((num_q, num_g), dtype=np.float32)
    return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("ties", [False, True])
def test_random_cases_match_reference(ties: bool) -> None:
    rng = np.random.default_rng(7 + ties)
    for _ in range(6):
        distmat, qp, gp, qc, gc = _random_case(
            rng, int(rng.integers(5, 60)), int(rng.integers(20, 300)), ties
        )
        ref = evaluate_rank_reference(distmat, qp, gp, qc, gc, max_rank=20, topk_ap=10)
        out = evaluate_rank(distmat, qp, gp, qc, gc, max_rank=20, topk_ap=10)
        assert np.abs(out["cmc"] - ref["cmc"]).max() <= 1e-12
        assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
        assert out["mINP"] == pytest.approx(ref["mINP"], abs=1e-12)
        assert out["mAP@10"] == pytest.approx(ref["mAP_at_k"], abs=1e-12)
        assert out["num_skipped_queries"] == ref["num_skipped_queries"]


def test_larger_random_case_matches_reference() -> None:
    rng = np.random.default_rng(3)
    num_q, num_g = 200, 3000
    g_pids = rng.integers(0, 150, num_g)
    q_pids = rng.integers(0, 150, num_q)
    q_cams, g_cams = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    distmat = rng.random((num_q, num_g), dtype=np.float32)
    distmat[5, :100] = np.inf  # infinite distances are ranked last, ties by index
    distmat[6, :50] = -np.inf  # and minus infinity first
    distmat[7, :] = np.inf  # a row with nothing finite: all tied
    distmat[8, g_pids == q_pids[8]] = np.inf  # every match at +inf
    ref = evaluate_rank_reference(distmat, q_pids, g_pids, q_cams, g_cams)
    out = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    assert np.abs(out["cmc"] - ref["cmc"]).max() <= 1e-6
    assert abs(out["mAP"] - ref["mAP"]) <= 1e-6 and abs(out["mINP"] - ref["mINP"]) <= 1e-6


def test_chunked_generator_and_callable_inputs_agree() -> None:
    rng = np.random.default_rng(11)
    distmat, qp, gp, qc, gc = _random_case(rng, 37, 150, ties=False)
    whole = evaluate_rank(distmat, qp, gp, qc, gc, topk_ap=5, tpr_fprs=[0.01, 0.1])
    sizes = [5, 1, 13, 18]  # irregular blocks from a generator
    blocks = (distmat[s:e] for s, e in zip(np.cumsum([0] + sizes[:-1]), np.cumsum(sizes)))
    variants = [
        evaluate_rank(distmat, qp, gp, qc, gc, topk_ap=5, tpr_fprs=[0.01, 0.1], chunk_size=1),
        evaluate_rank(distmat, qp, gp, qc, gc, topk_ap=5, tpr_fprs=[0.01, 0.1], chunk_size=7),
        evaluate_rank(blocks, qp, gp, qc, gc, topk_ap=5, tpr_fprs=[0.01, 0.1]),
        evaluate_rank(
            lambda s, e: distmat[s:e].astype(np.float64),
            qp,
            gp,
            qc,
            gc,
            topk_ap=5,
            tpr_fprs=[0.01, 0.1],
            chunk_size=4,
        ),
        evaluate_rank(torch.from_numpy(distmat), qp, gp, qc, gc, topk_ap=5, tpr_fprs=[0.01, 0.1]),
    ]
    for out in variants:
        np.testing.assert_array_equal(out["cmc"], whole["cmc"])
        assert out["mAP"] == pytest.approx(whole["mAP"], abs=1e-12)
        assert out["mINP"] == pytest.approx(whole["mINP"], abs=1e-12)
        assert out["mAP@5"] == pytest.approx(whole["mAP@5"], abs=1e-12)
        assert out["tpr_at_fpr"] == whole["tpr_at_fpr"]


def test_single_gallery_shot_matches_reference_and_is_seeded() -> None:
    rng = np.random.default_rng(5)
    for ties in (False, True):
        distmat, qp, gp, qc, gc = _random_case(rng, 30, 120, ties)
        ref = single_gallery_shot_cmc_reference(distmat, qp, gp, qc, gc, max_rank=10, seed=3)
        out = evaluate_rank(
            distmat, qp, gp, qc, gc, max_rank=10, cuhk03_single_gallery_shot=True, seed=3, chunk_size=4
        )
        np.testing.assert_allclose(out["cmc"], ref, atol=1e-12)
        standard = evaluate_rank(distmat, qp, gp, qc, gc, max_rank=10)
        assert out["mAP"] == standard["mAP"]  # mAP stays the standard protocol's
        np.testing.assert_array_equal(out["cmc_all_shot"], standard["cmc"])
    other_seed = evaluate_rank(distmat, qp, gp, qc, gc, max_rank=10, cuhk03_single_gallery_shot=True, seed=4)
    assert not np.array_equal(other_seed["cmc"], out["cmc"])


def test_single_gallery_shot_with_one_image_per_identity_equals_standard() -> None:
    rng = np.random.default_rng(2)
    g_pids = np.arange(40)
    distmat = rng.random((25, 40))
    q_pids = rng.integers(0, 40, 25)
    out = evaluate_rank(
        distmat, q_pids, g_pids, np.zeros(25), np.ones(40), max_rank=10, cuhk03_single_gallery_shot=True
    )
    np.testing.assert_allclose(out["cmc"], out["cmc_all_shot"])


def test_tpr_at_fpr_hand_computed() -> None:
    # pairs: positives (pid 1, other camera) 0.1 and 0.3; negatives 0.2, 0.4, 0.5, 0.6
    distmat = np.array([[0.1, 0.3, 0.2, 0.4, 0.5, 0.6]])
    g_pids, g_cams = [1, 1, 2, 3, 4, 5], [1, 2, 1, 1, 1, 1]
    out = evaluate_rank(distmat, [1], g_pids, [0], g_cams, tpr_fprs=[0.0, 0.25, 0.5, 1.0])
    # FPR 0: no negative accepted -> threshold below 0.2 -> accepts 0.1 only -> TPR 1/2
    # FPR 0.25: one negative (0.2) may pass -> threshold below 0.4 -> accepts 0.1, 0.3 -> TPR 1
    assert out["tpr_at_fpr"] == {0.0: 0.5, 0.25: 1.0, 0.5: 1.0, 1.0: 1.0}


def test_tpr_at_fpr_matches_reference_on_random_data() -> None:
    rng = np.random.default_rng(9)
    distmat, qp, gp, qc, gc = _random_case(rng, 40, 200, ties=False)
    fprs = [0.0, 0.001, 0.01, 0.1, 0.33]
    ref = tpr_at_fpr_reference(distmat, qp, gp, qc, gc, fprs)
    out = evaluate_rank(distmat, qp, gp, qc, gc, tpr_fprs=fprs, chunk_size=3)
    assert out["tpr_at_fpr"] == ref


def test_field_style_baseline_agrees_with_the_fast_evaluator():
    from reidflow.eval.reference import evaluate_rank_field_style

    rng = np.random.default_rng(3)
    dist = rng.random((40, 300)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 12, 40), rng.integers(0, 12, 300)
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 300)
    fast = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    field = evaluate_rank_field_style(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert abs(fast["mAP"] - field["mAP"]) < 1e-9 and abs(fast["mINP"] - field["mINP"]) < 1e-9
    np.testing.assert_allclose(fast["cmc"], field["cmc"], atol=1e-12)
