"""Feature extraction order/flip/L2, model artifacts, ensembles and the scoring variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reidflow.data.sample import Sample
from reidflow.data.shards import write_shards
from reidflow.errors import ArtifactError, ConfigError
from reidflow.eval.ensemble import camera_corrected, concat_features, sq_euclidean
from reidflow.eval.features import extract
from reidflow.eval.scoring import RerankParams, score_variants
from reidflow.models.artifact import load_model_artifact, save_model_artifact
from reidflow.models.reid_model import ModelConfig, build_reid_model


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(10):
        path = root / "raw" / f"{i:04d}_c{i % 2 + 1}s1_000001_01.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path, quality=90)
        samples.append(Sample(str(path), pid=i // 2, camid=i % 2, domain="toy", split="gallery"))
    write_shards(samples, root / "out", dataset="toy", root=root / "raw")
    return root / "out" / "toy"


class Recorder(torch.nn.Module):
    """Returns the mean of each image row 0 (so flipped and unflipped inputs are distinguishable)."""

    def forward(self, x):
        return torch.stack([x[:, :, 0, :].mean((1, 2)), x[:, 0, 0, 0]], dim=1)


def test_extract_keeps_order_averages_flips_and_normalizes(shard_dir):
    feats = extract(Recorder(), shard_dir, height=32, width=16, batch_size=3, flip=True, normalize=False)
    assert feats.features.shape == (10, 2) and list(feats.pids) == [i // 2 for i in range(10)]
    no_flip = extract(Recorder(), shard_dir, height=32, width=16, batch_size=4, flip=False, normalize=False)
    np.testing.assert_allclose(
        feats.features[:, 0], no_flip.features[:, 0], rtol=1e-5
    )  # mean is flip-invariant
    assert not np.allclose(feats.features[:, 1], no_flip.features[:, 1])  # a corner pixel is not
    unit = extract(Recorder(), shard_dir, height=32, width=16, batch_size=5)
    np.testing.assert_allclose(np.linalg.norm(unit.features, axis=1), 1.0, rtol=1e-5)


def test_model_artifact_round_trip_and_errors(tmp_path, shard_dir):
    cfg = ModelConfig(backbone="osnet_x0_25", num_classes=5)
    model = build_reid_model(cfg).eval()
    save_model_artifact(tmp_path, model, cfg, height=32, width=16, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    loaded, meta = load_model_artifact(tmp_path)
    x = torch.randn(2, 3, 32, 16)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["input"] == {"height": 32, "width": 16}
    (tmp_path / "model.json").write_text('{"model": {"backbone": "resnet50", "num_classes": 5}}')
    with pytest.raises(ArtifactError, match="do not fit"):
        load_model_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="not a model artifact"):
        load_model_artifact(tmp_path / "missing")


def test_ensemble_concat_and_camera_correction():
    a, b = np.eye(3, dtype=np.float32), np.ones((3, 2), np.float32)
    both = concat_features([a, b], weights=[1.0, 0.0])
    np.testing.assert_allclose(both[:, :3], a, atol=1e-6)
    assert np.allclose(np.linalg.norm(both, axis=1), 1)
    with pytest.raises(ConfigError, match="same images"):
        concat_features([a, b[:2]])
    d = sq_euclidean(a, a)
    np.testing.assert_allclose(np.diag(d), 0, atol=1e-6)
    np.testing.assert_allclose(camera_corrected(d, d, 0.5), 0.5 * d, atol=1e-6)


def test_score_variants_with_camera_and_rerank_on_separable_data():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(6, 8))
    q = centers.repeat(2, 0) + 0.05 * rng.normal(size=(12, 8))
    g = centers.repeat(4, 0) + 0.05 * rng.normal(size=(24, 8))
    q_p, g_p = np.arange(6).repeat(2), np.arange(6).repeat(4)
    q_c, g_c = np.zeros(12, int), np.ones(24, int)
    cam = (rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=(24, 4)).astype(np.float32))
    res, dists = score_variants(
        q, g, q_p, g_p, q_c, g_c, max_rank=10, rerank=RerankParams(k1=5, k2=2), cam=cam
    )
    assert set(res) == {"plain", "camera", "rerank", "camera+rerank"}
    assert res["plain"]["mAP"] == pytest.approx(1.0) and res["rerank"]["mAP"] == pytest.approx(1.0)
    assert dists["camera"].shape == (12, 24)
