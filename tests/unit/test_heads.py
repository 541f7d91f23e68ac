"""Pooling, BNNeck, classifiers, ReIDModel and ModelConfig round trips."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reidflow.errors import ConfigError
from reidflow.models.heads import (
    ArcFace,
    BNNeck,
    CosFace,
    GeM,
    LinearClassifier,
    build_classifier,
    build_pool,
)
from reidflow.models.registry import build_backbone
from reidflow.models.reid_model import ModelConfig, ReIDModel, build_reid_model


def test_gem_hand_computed_and_limits():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    gem = GeM()
    assert gem.p.item() == 3.0 and gem.p.requires_grad and gem.eps == 1e-6
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)  # (100/4)^(1/3) = 2.924...
    assert gem(x).item() == pytest.approx(expected, rel=1e-6)
    assert GeM(p=1.0)(x).item() == pytest.approx(2.5)  # p = 1 is average pooling
    assert GeM(p=50.0)(x).item() == pytest.approx(4.0, rel=0.03)  # large p tends to max pooling


def test_gem_p_receives_gradient_and_negative_inputs_are_clamped():
    gem = GeM()
    x = torch.tensor([-1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    out = gem(x)
    out.sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs() > 0
    assert torch.isfinite(out).all()


def test_avg_and_max_pool_and_unknown_pool():
    x = torch.arange(8.0).view(1, 2, 2, 2)
    torch.testing.assert_close(build_pool("avg")(x), torch.tensor([[1.5, 5.5]]))
    torch.testing.assert_close(build_pool("max")(x), torch.tensor([[3.0, 7.0]]))
    with pytest.raises(ConfigError, match="known pools: gem, avg, max"):
        build_pool("mean")


def test_bnneck_bias_is_frozen_at_zero():
    neck = BNNeck(4)
    assert not neck.bias.requires_grad and neck.weight.requires_grad
    out = neck(torch.randn(8, 4) * 5 + 3)
    out.sum().backward()
    assert neck.bias.grad is None and torch.all(neck.bias == 0)


def _unit_setup():
    """Two classes with unit weight vectors at angles 0 and 90°; a feature at 60° from class 0."""
    features = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]]) * 7.0  # norm is irrelevant
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    return features, weight


def test_arcface_adds_angular_margin_to_target_only():
    features, weight = _unit_setup()
    head = ArcFace(2, 2)
    assert (head.scale, head.margin) == (64.0, 0.35)
    head.weight.data.copy_(weight)
    logits = head(features, torch.tensor([0]))
    # target: 64·cos(60° + 0.35 rad); other class: 64·cos(30°)
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(math.pi / 3 + 0.35), rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(64 * math.cos(math.pi / 6), rel=1e-5)
    # without labels: plain scaled cosines
    torch.testing.assert_close(head(features), 64 * torch.tensor([[0.5, math.cos(math.pi / 6)]]))


def test_arcface_falls_back_when_angle_plus_margin_passes_pi():
    head = ArcFace(2, 1, scale=1.0, margin=0.35)
    head.weight.data.copy_(torch.tensor([[1.0, 0.0]]))
    theta = math.pi - 0.1  # θ + m > π
    logit = head(torch.tensor([[math.cos(theta), math.sin(theta)]]), torch.tensor([0]))
    assert logit.item() == pytest.approx(math.cos(theta) - 0.35 * math.sin(0.35), rel=1e-5)


def test_cosface_subtracts_cosine_margin():
    features, weight = _unit_setup()
    head = CosFace(2, 2)
    assert (head.scale, head.margin) == (30.0, 0.4)
    head.weight.data.copy_(weight)
    logits = head(features, torch.tensor([1]))
    assert logits[0, 1].item() == pytest.approx(30 * (math.cos(math.pi / 6) - 0.4), rel=1e-5)
    assert logits[0, 0].item() == pytest.approx(30 * 0.5, rel=1e-5)


def test_linear_classifier_is_bias_free_and_labels_are_checked():
    head = build_classifier("linear", 3, 5)
    assert isinstance(head, LinearClassifier) and [n for n, _ in head.named_parameters()] == ["weight"]
    assert head(torch.zeros(2, 3)).abs().sum() == 0  # no bias
    with pytest.raises(ConfigError, match=r"labels must be in \[0, 5\)"):
        build_classifier("arcface", 3, 5)(torch.randn(2, 3), torch.tensor([0, 5]))
    with pytest.raises(ConfigError, match="known classifiers"):
        build_classifier("softmax", 3, 5)


def _small_model(**kw) -> ReIDModel:
    torch.manual_seed(0)
    return ReIDModel(build_backbone("osnet_x0_25"), num_classes=6, **kw)


def test_reid_model_train_outputs_and_eval_features():
    model = _small_model(classifier="cosface").train()
    x, labels = torch.randn(4, 3, 32, 16), torch.tensor([0, 1, 2, 3])
    out = model(x, labels)
    assert set(out) == {"features", "bn_features", "logits"}
    assert out["features"].shape == (4, 128) and out["bn_features"].shape == (4, 128)
    assert out["logits"].shape == (4, 6)
    # in training the BNNeck normalizes the batch: per-dimension mean ~ 0 (bias frozen at 0)
    assert out["bn_features"].mean(dim=0).abs().max() < 1e-4
    assert out["features"].mean(dim=0).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        bn_feat = model(x)
        pre_bn = model(x, eval_features="pre_bn")
        expected_bn = model.neck(pre_bn)
    torch.testing.assert_close(bn_feat, expected_bn)
    assert not torch.allclose(bn_feat, pre_bn)


def test_reid_model_embedding_and_no_neck():
    model = _small_model(embedding_dim=32, neck="none", eval_features="pre_bn").train()
    out = model(torch.randn(4, 3, 32, 16))
    assert out["features"].shape == (4, 32)
    torch.testing.assert_close(out["features"], out["bn_features"])
    with pytest.raises(ConfigError, match="neck"):
        _small_model(neck="bn")


def test_model_config_round_trips_through_json_and_rebuilds_the_same_model():
    cfg = ModelConfig(
        backbone="osnet_x0_25",
        num_classes=7,
        classifier="arcface",
        classifier_margin=0.5,
        pool="gem",
        embedding_dim=16,
        last_stride=1,
    )
    text = json.dumps(cfg.model_dump())
    rebuilt_cfg = ModelConfig.model_validate(json.loads(text))
    assert rebuilt_cfg == cfg
    torch.manual_seed(0)
    first = build_reid_model(cfg).eval()
    second = build_reid_model(json.loads(text)).eval()
    second.load_state_dict(first.state_dict())
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(first(x), second(x))
    assert second.classifier.margin == 0.5 and second.classifier.scale == 64.0


def test_model_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.num_classes"):
        ModelConfig.from_mapping({"backbone": "osnet_x0_25", "num_classes": 0})
    with pytest.raises(ConfigError, match=r"model\.pooling"):
        ModelConfig.from_mapping({"backbone": "osnet_x0_25", "num_classes": 3, "pooling": "gem"})
    with pytest.raises(ConfigError, match="known backbones"):
        build_reid_model({"backbone": "osnet_x9", "num_classes": 3})


def test_arcface_gradient_is_finite_when_feature_matches_its_class():
    head = ArcFace(2, 2)
    head.weight.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    features = torch.tensor([[3.0, 0.0]], requires_grad=True)  # cos θ = 1 exactly for class 0
    head(features, torch.tensor([0])).sum().backward()
    assert torch.isfinite(features.grad).all() and torch.isfinite(head.weight.grad).all()
