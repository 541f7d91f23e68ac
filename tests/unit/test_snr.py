"""SNR module, its placement in ReIDModel, the dual causality loss, and model artifacts with SNR."""

from __future__ import annotations

import math

import pytest
import torch

from reidflow.errors import ConfigError
from reidflow.losses import dual_causality_loss
from reidflow.models.artifact import load_model_artifact, save_model_artifact
from reidflow.models.registry import build_backbone
from reidflow.models.reid_model import ModelConfig, ReIDModel, build_reid_model
from reidflow.models.snr import SNRModule, build_snr_modules

LN2 = math.log(2.0)
LABELS = torch.tensor([0, 0, 1, 1])


def _snr_config(backbone: str = "osnet_x0_25", stages: list[int] | None = None) -> ModelConfig:
    return ModelConfig(backbone=backbone, num_classes=2, snr_stages=[1, 2, 3] if stages is None else stages)


@pytest.mark.parametrize("name", ["osnet_x0_25", "mobilenetv2_x0_5", "resnet50"])
def test_snr_shapes_for_every_backbone_family(name):
    torch.manual_seed(0)
    model = build_reid_model(_snr_config(name)).train()
    channels = model.backbone.stage_channels
    out = model(torch.randn(4, 3, 64, 32), LABELS)
    assert len(out["snr"]) == 3
    for stage, triple in zip((1, 2, 3), out["snr"], strict=True):
        assert [t.shape for t in triple] == [torch.Size([4, channels[stage - 1]])] * 3
    assert out["features"].shape == (4, model.feature_dim) and out["logits"].shape == (4, 2)
    model.eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, 64, 32))
    assert isinstance(features, torch.Tensor) and features.shape == (2, model.feature_dim)


def test_snr_forward_is_stem_then_stages_with_the_restituted_map():
    torch.manual_seed(0)
    model = build_reid_model(_snr_config(stages=[1, 3])).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        h = model.backbone.forward_stem(x)
        stages = model.backbone.stage_modules()
        h = model.snr["stage1"](stages[0](h)).restituted
        h = stages[1](h)
        h = model.snr["stage3"](stages[2](h)).restituted
        expected = model.neck(model.pool(stages[3](h)))
        assert torch.equal(model(x), expected)
        assert not torch.equal(model(x), model.neck(model.pool(model.backbone(x))))  # SNR changes the path


def test_module_normalizes_and_splits_the_residual():
    torch.manual_seed(0)
    module = SNRModule(32)
    x = torch.randn(3, 32, 8, 4) * 5 + 2
    out = module(x)
    normalized = out.normalized
    torch.testing.assert_close(normalized.mean(dim=(2, 3)), torch.zeros(3, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        normalized.var(dim=(2, 3), unbiased=False), torch.ones(3, 32), atol=1e-3, rtol=0
    )
    residual = x - normalized
    torch.testing.assert_close(out.restituted + out.contaminated, 2 * normalized + residual)
    weights = module.attention(residual)
    assert weights.shape == (3, 32, 1, 1) and bool(((weights > 0) & (weights < 1)).all())
    torch.testing.assert_close(out.restituted, normalized + weights * residual)
    # pooled F̃ is the IN bias for every sample (the normalized features carry no identity)
    torch.testing.assert_close(
        normalized.mean(dim=(2, 3)), module.instance_norm.bias.expand(3, 32), atol=1e-5, rtol=0
    )


def test_attention_width_and_tiny_maps():
    assert SNRModule(64).fc1.out_features == 4 and SNRModule(64).fc2.out_features == 64
    assert SNRModule(8, reduction=16).fc1.out_features == 1
    assert SNRModule(64, reduction=4).fc1.out_features == 16
    with pytest.raises(ConfigError, match="larger than 1×1"):
        SNRModule(8)(torch.randn(2, 8, 1, 1))
    with pytest.raises(ConfigError, match="N×8×H×W"):
        SNRModule(8)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ConfigError, match="model.snr_reduction"):
        SNRModule(8, reduction=0)


def test_build_snr_modules_uses_stage_channels():
    backbone = build_backbone("mobilenetv2_x0_5")
    modules = build_snr_modules(backbone, [2, 3], reduction=8)
    assert list(modules) == ["stage2", "stage3"]
    assert modules["stage2"].channels == backbone.stage_channels[1]
    assert modules["stage3"].fc1.out_features == backbone.stage_channels[2] // 8
    assert len(build_snr_modules(backbone, [])) == 0


@pytest.mark.parametrize("stages", [[4], [0, 1], [2, 1], [1, 1], [True], ["1"], "12"])
def test_invalid_snr_stages_are_config_errors(stages):
    backbone = build_backbone("osnet_x0_25")
    with pytest.raises(ConfigError, match=r"model\.snr_stages.*\{1, 2, 3\}"):
        ReIDModel(backbone, num_classes=2, snr_stages=stages)
    with pytest.raises(ConfigError, match=r"model\.snr_stages"):
        ModelConfig.from_mapping({"backbone": "osnet_x0_25", "num_classes": 2, "snr_stages": stages})


def test_invalid_snr_reduction_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.snr_reduction"):
        ModelConfig.from_mapping({"backbone": "osnet_x0_25", "num_classes": 2, "snr_reduction": 0})
    with pytest.raises(ConfigError, match=r"model\.snr_reduction"):
        ReIDModel(build_backbone("osnet_x0_25"), num_classes=2, snr_stages=[1], snr_reduction=-1)


def test_loss_with_identical_features_is_four_ln2():
    torch.manual_seed(0)
    features = torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = dual_causality_loss(features, features.clone(), features.clone(), labels)
    assert loss.item() == pytest.approx(4 * LN2, abs=1e-6)


def test_loss_hand_computed_and_lower_for_more_discriminative_restituted_features():
    normalized = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    restituted = torch.tensor([[0.0], [0.0], [10.0], [10.0]])  # classes collapsed and far apart
    # mined on restituted: the one positive each; negatives tie at 10, argmin takes the first:
    # 0→2, 1→2, 2→0, 3→0, whose normalized distances are 3, 2, 3, 4 (every positive is at 1)
    d_an = [3.0, 2.0, 3.0, 4.0]
    tiny = 1e-6  # clamped distance of identical rows
    enhanced = [math.log1p(math.exp(tiny - 1.0)) + math.log1p(math.exp(d - 10.0)) for d in d_an]
    expected = sum(enhanced) / 4 + 2 * LN2  # contaminated == normalized: L- = 2 ln 2
    loss = dual_causality_loss(normalized, restituted, normalized, LABELS)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    baseline = dual_causality_loss(normalized, normalized, normalized, LABELS)
    assert baseline.item() == pytest.approx(4 * LN2, abs=1e-6) and loss.item() < baseline.item() - 1.0
    confused = torch.tensor([[0.0], [5.0], [2.0], [3.0]])  # positives apart, negatives close
    assert dual_causality_loss(normalized, confused, normalized, LABELS).item() > baseline.item()


def test_loss_input_errors():
    features = torch.randn(4, 3)
    with pytest.raises(ConfigError, match="restituted features must have the shape"):
        dual_causality_loss(features, torch.randn(4, 2), features, LABELS)
    with pytest.raises(ConfigError, match="contaminated features must have the shape"):
        dual_causality_loss(features, features, torch.randn(3, 3), LABELS)
    with pytest.raises(ConfigError, match="must be N×D"):
        dual_causality_loss(torch.randn(4, 3, 1), features, features, LABELS)
    with pytest.raises(ConfigError, match=r"labels must have shape \(4,\)"):
        dual_causality_loss(features, features, features, torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="both a positive"):
        dual_causality_loss(features, features, features, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ConfigError, match="both a positive"):
        dual_causality_loss(features, features, features, torch.tensor([5, 5, 5, 5]))


def test_gradient_reaches_the_snr_attention_through_a_training_forward():
    torch.manual_seed(0)
    model = build_reid_model(_snr_config()).train()
    out = model(torch.randn(4, 3, 64, 32), LABELS)
    loss = sum(dual_causality_loss(*triple, LABELS) for triple in out["snr"])
    loss.backward()
    for stage in ("stage1", "stage2", "stage3"):
        for layer in ("fc1", "fc2"):
            grad = getattr(model.snr[stage], layer).weight.grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, (stage, layer)


def test_model_artifact_with_snr_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = _snr_config(stages=[1, 3])
    model = build_reid_model(cfg)
    with torch.no_grad():  # move the IN affine off its 1/0 init so its saving is tested too
        for module in model.snr.values():
            module.instance_norm.weight.uniform_(0.5, 1.5)
            module.instance_norm.bias.uniform_(-0.5, 0.5)
    model.eval()
    save_model_artifact(tmp_path, model, cfg, height=64, width=32, mean=(0.5,) * 3, std=(0.2,) * 3)
    loaded, meta = load_model_artifact(tmp_path)
    assert meta["model"]["snr_stages"] == [1, 3] and meta["model"]["snr_reduction"] == 16
    assert loaded.snr_stages == (1, 3) and list(loaded.snr) == ["stage1", "stage3"]
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded(x, eval_features="pre_bn"), model(x, eval_features="pre_bn"))


def test_model_without_snr_is_unchanged():
    torch.manual_seed(0)
    before = build_reid_model(ModelConfig(backbone="osnet_x0_25", num_classes=2))
    torch.manual_seed(0)
    empty = build_reid_model(ModelConfig(backbone="osnet_x0_25", num_classes=2, snr_stages=[]))
    assert empty.snr is None and empty.snr_stages == ()
    assert not any("snr" in name for name in empty.state_dict())
    assert list(before.state_dict()) == list(empty.state_dict())
    for key, value in before.state_dict().items():
        assert torch.equal(value, empty.state_dict()[key]), key
    x = torch.randn(4, 3, 64, 32)
    before.eval(), empty.eval()
    with torch.no_grad():
        assert torch.equal(empty(x), before(x))
        assert torch.equal(empty(x), empty.neck(empty.pool(empty.backbone(x))))
    before.train(), empty.train()
    out_before, out_empty = before(x, LABELS), empty(x, LABELS)
    assert set(out_empty) == {"features", "bn_features", "logits"}
    for key in out_before:
        assert torch.equal(out_before[key], out_empty[key]), key


def test_snr_keeps_backbone_parameter_names_and_values():
    torch.manual_seed(0)
    plain = build_reid_model(ModelConfig(backbone="osnet_x0_25", num_classes=2))
    torch.manual_seed(0)
    with_snr = build_reid_model(_snr_config())
    plain_keys, snr_keys = set(plain.state_dict()), set(with_snr.state_dict())
    assert plain_keys <= snr_keys
    assert snr_keys - plain_keys and all(key.startswith("snr.stage") for key in snr_keys - plain_keys)
    for key, value in plain.backbone.state_dict().items():
        assert torch.equal(value, with_snr.backbone.state_dict()[key]), key
