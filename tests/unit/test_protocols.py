"""Evaluation protocols: split sizes, determinism, records, and aggregation over splits/targets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reidflow.data.sample import Sample
from reidflow.errors import ConfigError, DataError
from reidflow.eval.protocols import (
    Split,
    average_over_targets,
    evaluate_splits,
    multi_split,
    random_id_split,
    standard,
)


def _viper_arrays(num_ids: int = 632) -> dict[str, np.ndarray]:
    pids = np.repeat(np.arange(num_ids), 2)
    return {"pids": pids, "camids": np.tile([0, 1], num_ids)}


def _prid_arrays() -> dict[str, np.ndarray]:
    # camera A: 385 people, camera B: 749; only ids 1..200 are the same people in both cameras,
    # so camera A's other 185 people get labels no camera-B image has.
    a_pids = np.concatenate([np.arange(1, 201), np.arange(1201, 1386)])
    b_pids = np.arange(1, 750)
    return {
        "pids": np.concatenate([a_pids, b_pids]),
        "camids": np.concatenate([np.zeros(len(a_pids), int), np.ones(len(b_pids), int)]),
    }


def test_viper_splits_have_published_sizes_and_are_cross_view() -> None:
    arrays = _viper_arrays()
    splits = multi_split(arrays, "viper", num_splits=10, seed=0)
    assert len(splits) == 10
    for split in splits:
        assert len(split.query) == 316 and len(split.gallery) == 316
        assert set(arrays["camids"][split.query]) == {0}
        assert set(arrays["camids"][split.gallery]) == {1}
        assert sorted(split.query_pids) == sorted(split.gallery_pids)
    assert len({tuple(s.query) for s in splits}) == 10  # every split differs


def test_splits_are_deterministic_and_recorded() -> None:
    arrays = _viper_arrays()
    first = multi_split(arrays, "viper", num_splits=3, seed=5)
    again = multi_split(arrays, "viper", num_splits=3, seed=5)
    other = multi_split(arrays, "viper", num_splits=3, seed=6)
    assert first == again
    assert first[0].query != other[0].query
    records = json.loads(json.dumps([s.to_dict() for s in first]))
    assert [Split.from_dict(r) for r in records] == first
    with pytest.raises(DataError, match="missing keys"):
        Split.from_dict({"protocol": "viper"})


def test_prid_gallery_has_matches_and_distractors() -> None:
    arrays = _prid_arrays()
    for split in multi_split(arrays, "prid", num_splits=3):
        assert len(split.query) == 100
        assert len(split.gallery) == 649  # 100 matches + 549 camera-B-only ids
        query_ids = set(split.query_pids)
        assert query_ids <= set(range(1, 201))
        assert sum(p in query_ids for p in split.gallery_pids) == 100
        # the other 100 shared ids are training ids and stay out of the gallery
        assert not (set(split.gallery_pids) & (set(range(1, 201)) - query_ids))


def test_grid_from_samples_uses_probe_and_gallery_folders() -> None:
    samples = []
    for pid in range(1, 251):
        samples.append(Sample(f"probe/{pid:04d}.jpg", pid, pid % 8, "grid", "query"))
        samples.append(Sample(f"gallery/{pid:04d}.jpg", pid, (pid + 3) % 8, "grid", "gallery"))
    samples += [Sample(f"gallery/0000_{i:03d}.jpg", 0, i % 8, "grid", "gallery") for i in range(775)]
    for split in multi_split(samples, "grid", num_splits=2, seed=1):
        assert len(split.query) == 125 and len(split.gallery) == 900
        assert all(samples[i].split == "query" for i in split.query)
        assert split.gallery_pids.count(0) == 775


def test_ilids_one_query_and_one_gallery_image_per_id() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(2, 5, 119)
    pids = np.repeat(np.arange(119), counts)
    camids = rng.integers(0, 2, len(pids))
    for split in multi_split({"pids": pids, "camids": camids}, "ilids", num_splits=3):
        assert len(split.query) == 60 and len(split.gallery) == 60
        assert split.query_pids == split.gallery_pids
        assert not set(split.query) & set(split.gallery)


def test_scales_down_for_small_targets() -> None:
    splits = multi_split(_viper_arrays(num_ids=21), "viper", num_splits=2)
    assert [len(s.query) for s in splits] == [11, 11]  # ceil(21 / 2)
    split = random_id_split(np.repeat(np.arange(8), 3), np.tile([0, 1, 2], 8), 4, seed=2)
    assert len(split.query) == 4 and len(split.gallery) == 4
    with pytest.raises(ConfigError, match="num_query_ids"):
        random_id_split(np.repeat(np.arange(8), 3), np.tile([0, 1, 2], 8), 9)


def test_bad_protocol_inputs() -> None:
    with pytest.raises(ConfigError, match="protocol"):
        multi_split(_viper_arrays(), "market")
    with pytest.raises(DataError, match="camids 0"):
        multi_split({"pids": [1, 1, 2, 2], "camids": [0, 2, 0, 1]}, "viper")
    with pytest.raises(DataError, match="sides"):
        multi_split({"pids": [1, 1], "camids": [0, 1]}, "grid")


def test_evaluate_splits_mean_std_and_targets() -> None:
    rng = np.random.default_rng(3)
    arrays = _viper_arrays(num_ids=40)
    identity_feature = rng.normal(size=(40, 8))
    features = identity_feature[arrays["pids"]] + 0.01 * rng.normal(size=(80, 8))

    def perfect(query: list[int], gallery: list[int]) -> np.ndarray:
        return np.linalg.norm(features[query][:, None] - features[gallery][None], axis=2)

    def noisy(query: list[int], gallery: list[int]) -> np.ndarray:
        return np.random.default_rng(len(query) + query[0]).random((len(query), len(gallery)))

    splits = multi_split(arrays, "viper", num_splits=4)
    good = evaluate_splits(perfect, splits)
    assert good["mean"]["mAP"] == pytest.approx(1.0) and good["std"]["mAP"] == pytest.approx(0.0)
    assert good["mean"]["rank-1"] == pytest.approx(1.0)
    assert len(good["splits"]) == 4 and good["splits"][0]["split"]["query"] == splits[0].query
    bad = evaluate_splits(noisy, splits)
    per_split = [s["metrics"]["mAP"] for s in bad["splits"]]
    assert bad["mean"]["mAP"] == pytest.approx(np.mean(per_split))
    assert bad["std"]["mAP"] == pytest.approx(np.std(per_split)) and bad["std"]["mAP"] > 0
    overall = average_over_targets({"viper": good, "other": bad})
    assert overall["mean"]["mAP"] == pytest.approx((1.0 + bad["mean"]["mAP"]) / 2)
    assert set(overall["targets"]) == {"viper", "other"}


def test_standard_summary_is_json_ready() -> None:
    distmat = np.array([[0.1, 0.5], [0.7, 0.2]])
    out = standard(distmat, [1, 2], [1, 2], [0, 0], [1, 1], max_rank=2, tpr_fprs=[0.5])
    assert out["rank-1"] == 1.0 and out["mAP"] == 1.0
    json.dumps(out)
