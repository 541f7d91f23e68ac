"""Backbone registry, architectures (parameter counts, shapes, norm placement), last_stride."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reidflow.errors import ConfigError
from reidflow.models.norms import InstanceBatchNorm2d, InstanceNorm2d, register_norm
from reidflow.models.registry import build_backbone, list_backbones

EXPECTED_NAMES = {
    "resnet50",
    "resnet101",
    "resnet50_ibn_a",
    "resnet101_ibn_a",
    "resnet50_ibn_b",
    "resnet101_ibn_b",
    "mobilenetv2_x0_5",
    "mobilenetv2_x1_0",
    "mobilenetv2_x1_4",
    "osnet_x1_0",
    "osnet_x0_75",
    "osnet_x0_5",
    "osnet_x0_25",
    "osnet_ain_x1_0",
}
SMALL_NETS = ["mobilenetv2_x0_5", "mobilenetv2_x1_0", "osnet_x0_25", "osnet_x0_5", "osnet_ain_x1_0"]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _osnet_fc512_params(channels: int) -> int:
    """The public OSNet's FC after GAP: Linear(C, 512) with bias + BatchNorm1d(512) affine."""
    return channels * 512 + 512 + 2 * 512


class _ProbeNorm(nn.BatchNorm2d):
    """A norm kind that is distinguishable from every built-in one."""


register_norm("test_probe", _ProbeNorm, overwrite=True)


def test_all_published_names_are_listed():
    assert EXPECTED_NAMES <= set(list_backbones())


def test_unknown_name_and_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="known backbones: .*resnet50"):
        build_backbone("resnet51")
    with pytest.raises(ConfigError, match="last_stride"):
        build_backbone("osnet_x0_25", last_stride=3)
    with pytest.raises(ConfigError, match="known kinds"):
        build_backbone("osnet_x0_25", norm="batchnorm")
    with pytest.raises(ConfigError, match="does not take option.*width"):
        build_backbone("osnet_x0_25", width=2)


@pytest.mark.parametrize(
    ("name", "published_millions", "extra"),
    [
        # torchvision ResNet-50 has 25.56M with its 1000-way FC (2.05M): the 23.5M excludes the FC.
        ("resnet50", 23.5, 0),
        ("resnet101", 42.5, 0),
        # MobileNetV2 counts end at the final 1×1 conv (x1.0 3.5M with the ImageNet FC, 2.2M without).
        ("mobilenetv2_x1_0", 2.2, 0),
        ("mobilenetv2_x1_4", 4.3, 0),
        # OSNet's counts include its 512-d FC embedding after GAP (not the identity classifier).
        ("osnet_x1_0", 2.2, _osnet_fc512_params(512)),
        ("osnet_x0_25", 0.2, _osnet_fc512_params(128)),
    ],
)
def test_parameter_counts_match_published(name, published_millions, extra):
    count = _count(build_backbone(name)) + extra
    assert abs(count / 1e6 - published_millions) <= 0.05 * published_millions, count


def test_ibn_variants_keep_resnet_size():
    # IBN-a moves half the channels of some BNs to IN (same affine size); IBN-b adds 4 small IN affines.
    plain, ibn_a = _count(build_backbone("resnet50")), _count(build_backbone("resnet50_ibn_a"))
    assert plain == ibn_a == 23_508_032
    assert _count(build_backbone("resnet50_ibn_b")) - plain == 2 * (256 + 512)


def test_every_norm_goes_through_the_factory():
    for name in ["resnet50", "mobilenetv2_x0_5", "osnet_x0_25"]:
        model = build_backbone(name, norm="test_probe")
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        assert norms and all(isinstance(m, _ProbeNorm) for m in norms), name


def test_ibn_a_places_ibn_in_first_norm_of_stages_1_to_3():
    model = build_backbone("resnet50_ibn_a", norm="test_probe")
    for stage in (1, 2, 3, 4):
        for block in getattr(model, f"layer{stage}"):
            assert isinstance(block.bn1, InstanceBatchNorm2d) == (stage <= 3)
            assert isinstance(block.bn2, _ProbeNorm) and isinstance(block.bn3, _ProbeNorm)
            assert block.post_sum_norm is None
    assert isinstance(model.bn1, _ProbeNorm)


def test_ibn_b_places_in_on_stem_and_after_last_sum_of_stages_1_2():
    model = build_backbone("resnet50_ibn_b", norm="test_probe")
    assert isinstance(model.bn1, InstanceNorm2d)
    with_in = [
        f"layer{s}.{i}"
        for s in (1, 2, 3, 4)
        for i, block in enumerate(getattr(model, f"layer{s}"))
        if block.post_sum_norm is not None
    ]
    assert with_in == ["layer1.2", "layer2.3"]
    assert all(isinstance(model.get_submodule(p).post_sum_norm, InstanceNorm2d) for p in with_in)


def test_osnet_ain_instance_norm_positions():
    model = build_backbone("osnet_ain_x1_0", norm="test_probe")
    assert isinstance(model.conv1.bn, InstanceNorm2d)
    with_in = sorted(n for n, m in model.named_modules() if n.endswith("residual_norm"))
    assert with_in == [
        "conv2.0.residual_norm",
        "conv2.1.residual_norm",
        "conv3.1.residual_norm",
        "conv4.0.residual_norm",
    ]
    plain = build_backbone("osnet_x1_0", norm="test_probe")
    assert not any(isinstance(m, InstanceNorm2d) for m in plain.modules())


@pytest.mark.parametrize("name", SMALL_NETS)
def test_forward_shapes_and_stage_outputs(name):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        stages = model.forward_stages(x)
        final = model(x)
    assert len(stages) == 4
    assert [s.shape[1] for s in stages] == list(model.stage_channels)
    assert final.shape == (2, model.out_channels, 4, 2)  # /16 with last_stride=1
    torch.testing.assert_close(stages[-1], final)
    assert torch.isfinite(final).all()


@pytest.mark.parametrize("name", ["mobilenetv2_x0_5", "osnet_x0_25"])
def test_last_stride_two_halves_the_final_map(name):
    model = build_backbone(name, last_stride=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 32))
    assert out.shape[-2:] == (2, 1)


def test_resnet_stage_shapes_and_last_stride():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 32)
    for last_stride, expected in ((1, (4, 2)), (2, (2, 1))):
        model = build_backbone("resnet50_ibn_a", last_stride=last_stride).eval()
        with torch.no_grad():
            stages = model.forward_stages(x)
        assert [tuple(s.shape[1:]) for s in stages[:3]] == [(256, 16, 8), (512, 8, 4), (1024, 4, 2)]
        assert tuple(stages[3].shape[1:]) == (2048, *expected)


def test_backbone_trains_one_step():
    torch.manual_seed(0)
    model = build_backbone("osnet_x0_25", norm="bin").train()
    x = torch.randn(4, 3, 32, 16)
    loss = model(x).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
