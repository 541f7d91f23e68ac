"""The VisDA ensemble families: ResNeSt, DenseNet(-IBN-a), ResNeXt(-IBN-a), and their CPU-demo widths.

Architecture (parameter counts, stage shapes, norm and IBN-a placement, split attention), training
steps at 64×32 and 256×128, safetensors and model-artifact round trips, and pretrained loading from
the public checkpoint layouts (files written here from our own weights, renamed to the public keys).
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from reidflow.models.artifact import load_model_artifact, save_model_artifact
from reidflow.models.backbones.densenet import DenseIBN
from reidflow.models.backbones.resnest import SplitAttentionConv
from reidflow.models.norms import (
    InstanceBatchNorm2d,
    InstanceNorm2d,
    convert_norms,
    convert_to_dsbn,
    fold_dsbn,
    register_norm,
)
from reidflow.models.pretrained import load_pretrained
from reidflow.models.registry import build_backbone, list_backbones
from reidflow.models.reid_model import ModelConfig, build_reid_model

FULL = [
    "resnest50",
    "resnest101",
    "densenet121",
    "densenet169",
    "densenet121_ibn_a",
    "densenet169_ibn_a",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext50_ibn_a",
    "resnext101_ibn_a",
]
SMALL = [
    "resnest26_x0_25",
    "densenet63_x0_5",
    "densenet63_ibn_a_x0_5",
    "resnext26_x0_25",
    "resnext26_ibn_a_x0_25",
]
ALL = FULL + SMALL


class _VisdaProbeNorm(nn.BatchNorm2d):
    """A norm kind distinguishable from every built-in one."""


register_norm("visda_probe", _VisdaProbeNorm, overwrite=True)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomized_state(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.rand(v.shape, generator=generator, dtype=v.dtype) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def _assert_loaded(model: nn.Module, ours: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(ours)
    for key, value in ours.items():
        torch.testing.assert_close(state[key], value, msg=f"key {key} was not loaded")


# --- registry, sizes, shapes ----------------------------------------------------------------------


def test_all_names_are_registered():
    assert set(ALL) <= set(list_backbones())


@pytest.mark.parametrize(
    ("name", "published_millions", "fc_in"),
    [
        # Published counts include the 1000-way ImageNet FC (fc_in × 1000 + 1000); the backbones have none.
        ("resnest50", 27.5, 2048),  # ResNeSt paper, Table: ResNeSt-50 27.5M
        ("resnest101", 48.3, 2048),  # ResNeSt-101 48.3M
        ("densenet121", 8.0, 1024),  # DenseNet paper / torchvision 7.98M
        ("densenet169", 14.1, 1664),  # 14.15M
        ("resnext50_32x4d", 25.0, 2048),  # ResNeXt paper / torchvision 25.03M
        ("resnext101_32x8d", 88.8, 2048),  # torchvision 88.79M
    ],
)
def test_parameter_counts_match_published(name, published_millions, fc_in):
    count = _count(build_backbone(name)) + fc_in * 1000 + 1000
    assert abs(count / 1e6 - published_millions) <= 0.02 * published_millions, count


@pytest.mark.parametrize(
    ("plain", "ibn"),
    [
        ("densenet121", "densenet121_ibn_a"),
        ("densenet169", "densenet169_ibn_a"),
        ("resnext50_32x4d", "resnext50_ibn_a"),
        ("resnext101_32x8d", "resnext101_ibn_a"),
        ("densenet63_x0_5", "densenet63_ibn_a_x0_5"),
        ("resnext26_x0_25", "resnext26_ibn_a_x0_25"),
    ],
)
def test_ibn_a_keeps_the_parameter_count(plain, ibn):
    # IBN-a moves some channels of a norm from BN to IN: the same number of affine parameters.
    assert _count(build_backbone(plain)) == _count(build_backbone(ibn))


def test_small_widths_are_small():
    counts = {name: _count(build_backbone(name)) for name in SMALL}
    assert all(count < 1_100_000 for count in counts.values()), counts


@pytest.mark.parametrize("name", ALL)
def test_eval_forward_at_256x128_batch_1(name):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, 256, 128))
    assert [s.shape[1] for s in stages] == list(model.stage_channels)
    assert [tuple(s.shape[2:]) for s in stages] == [(64, 32), (32, 16), (16, 8), (16, 8)]
    assert stages[-1].shape[1] == model.out_channels
    assert torch.isfinite(stages[-1]).all()


@pytest.mark.parametrize("name", SMALL)
def test_last_stride_two_halves_the_final_map(name):
    model = build_backbone(name, last_stride=2).eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, 64, 32))
    assert [tuple(s.shape[2:]) for s in stages] == [(16, 8), (8, 4), (4, 2), (2, 1)]


@pytest.mark.parametrize("size", [(64, 32), (256, 128)])
@pytest.mark.parametrize("name", ALL)
def test_reid_model_trains_one_step(name, size):
    torch.manual_seed(0)
    model = build_reid_model({"backbone": name, "num_classes": 3, "pool": "gem", "neck": "bnneck"}).train()
    labels = torch.tensor([0, 2])
    out = model(torch.randn(2, 3, *size), labels)
    assert out["features"].shape == (2, model.backbone.out_channels)
    loss = F.cross_entropy(out["logits"], labels) + out["features"].pow(2).mean()
    loss.backward()
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad]  # BNNeck bias is frozen
    missing = [n for n, g in grads if g is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(g).all() for _, g in grads)


@pytest.mark.parametrize("norm", ["in", "ibn", "bin", "metabin"])
@pytest.mark.parametrize("name", ["resnest26_x0_25", "densenet63_ibn_a_x0_5", "resnext26_ibn_a_x0_25"])
def test_every_factory_norm_trains(name, norm):
    torch.manual_seed(0)
    model = build_reid_model({"backbone": name, "norm": norm, "num_classes": 3}).train()
    out = model(torch.randn(2, 3, 64, 32), torch.tensor([0, 1]))
    out["logits"].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.backbone.parameters())


@pytest.mark.parametrize("name", ["resnest26_x0_25", "densenet63_ibn_a_x0_5", "resnext26_ibn_a_x0_25"])
def test_dsbn_and_metabin_conversion(name):
    torch.manual_seed(0)
    model = build_reid_model({"backbone": name, "num_classes": 3})
    dsbn = convert_to_dsbn(build_reid_model({"backbone": name, "num_classes": 3})).train()
    dsbn(torch.randn(4, 3, 64, 32))["logits"].sum().backward()
    with torch.no_grad():
        assert fold_dsbn(dsbn).eval()(torch.randn(1, 3, 64, 32)).shape == (1, model.backbone.out_channels)
    converted = convert_norms(model, "metabin").train()
    converted(torch.randn(2, 3, 64, 32))["logits"].sum().backward()


# --- norm placement -------------------------------------------------------------------------------


def _composite_child(name: str, modules: dict[str, nn.Module]) -> bool:
    parent = name.rpartition(".")[0]
    return isinstance(modules.get(parent), (InstanceBatchNorm2d, DenseIBN))


@pytest.mark.parametrize("name", SMALL + ["resnest50", "densenet121_ibn_a", "resnext50_ibn_a"])
def test_every_feature_map_norm_goes_through_the_factory(name):
    model = build_backbone(name, norm="visda_probe")
    modules = dict(model.named_modules())
    for module_name, module in modules.items():
        if not isinstance(module, nn.modules.batchnorm._NormBase) or _composite_child(module_name, modules):
            continue
        if isinstance(module, nn.BatchNorm1d):  # ResNeSt's attention norm over the pooled vector
            assert name.startswith("resnest") and module_name.endswith(".conv2.bn1"), module_name
            continue
        assert isinstance(module, _VisdaProbeNorm), module_name


def test_resnext_ibn_a_places_ibn_first_in_stages_1_to_3():
    model = build_backbone("resnext50_ibn_a", norm="visda_probe")
    for stage in (1, 2, 3, 4):
        for block in getattr(model, f"layer{stage}"):
            assert isinstance(block.bn1, InstanceBatchNorm2d) == (stage <= 3)
            assert isinstance(block.bn2, _VisdaProbeNorm) and isinstance(block.bn3, _VisdaProbeNorm)
    assert isinstance(model.bn1, _VisdaProbeNorm)
    assert model.layer1[0].bn1.in_channels == 64  # half of the 128-channel grouped width
    plain = build_backbone("resnext50_32x4d", norm="visda_probe")
    assert not any(isinstance(m, (InstanceBatchNorm2d, InstanceNorm2d)) for m in plain.modules())


def test_resnext_grouped_widths():
    for name, widths in (
        ("resnext50_32x4d", (128, 256, 512, 1024)),
        ("resnext101_32x8d", (256, 512, 1024, 2048)),
    ):
        model = build_backbone(name)
        for stage, width in zip((1, 2, 3, 4), widths):
            conv = getattr(model, f"layer{stage}")[0].conv2
            assert (conv.in_channels, conv.groups) == (width, 32)
        assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


def test_densenet_ibn_a_placement_follows_ibn_net():
    model = build_backbone("densenet121_ibn_a", norm="visda_probe")
    with_ibn = sorted(n for n, m in model.named_modules() if isinstance(m, DenseIBN))
    expected = sorted(
        f"stage{b}.denseblock{b}.denselayer{layer}.norm1"
        for b, layers in ((1, 6), (2, 12), (3, 24))
        for layer in range(1, layers + 1, 3)
    )
    assert with_ibn == expected
    first = model.get_submodule("stage1.denseblock1.denselayer1.norm1")
    assert (first.bn.num_features, first.inorm.num_features) == (38, 26)  # int(0.6 × 64), the rest
    plain = build_backbone("densenet121")
    assert not any(isinstance(m, (DenseIBN, InstanceNorm2d)) for m in plain.modules())


def test_dense_ibn_is_bn_on_the_head_and_in_on_the_tail():
    norm = DenseIBN(10).eval()
    x = torch.randn(3, 10, 4, 5) * 3 + 2
    y = norm(x)
    torch.testing.assert_close(y[:, :6], x[:, :6] / math.sqrt(1 + 1e-5))  # BN at its initial statistics
    torch.testing.assert_close(y[:, 6:], F.instance_norm(x[:, 6:]), atol=1e-5, rtol=1e-5)
    bn = nn.BatchNorm2d(10)
    with torch.no_grad():
        for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            tensor.copy_(torch.rand(10) + 0.5)
    norm.load_from_batchnorm(bn)
    torch.testing.assert_close(norm.bn.running_mean, bn.running_mean[:6])
    torch.testing.assert_close(norm.inorm.weight.data, bn.weight[6:])


def test_densenet_stages_and_last_stride():
    model = build_backbone("densenet121")
    assert model.stage_channels == (256, 512, 1024, 1024)
    assert isinstance(model.stage4.transition3.pool, nn.Identity)
    assert isinstance(build_backbone("densenet121", last_stride=2).stage4.transition3.pool, nn.AvgPool2d)
    assert build_backbone("densenet169").stage_channels == (256, 512, 1280, 1664)


# --- ResNeSt specifics ----------------------------------------------------------------------------


def test_split_attention_is_a_softmax_over_the_radix_splits():
    torch.manual_seed(0)
    block = SplitAttentionConv(8, radix=2, cardinality=1, norm="bn")
    with torch.no_grad():
        for bn in (block.bn0, block.bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    block.eval()
    x = torch.randn(3, 8, 5, 4)
    assert block.conv.groups == 2  # each radix split sees its own half of the input channels
    u = F.relu(block.bn0(block.conv(x)))
    u1, u2 = u[:, :8], u[:, 8:]
    z = F.relu(block.bn1(F.linear((u1 + u2).mean(dim=(2, 3)), block.fc1.weight.flatten(1), block.fc1.bias)))
    a = F.linear(z, block.fc2.weight.flatten(1), block.fc2.bias).view(3, 2, 8).softmax(dim=1)
    expected = a[:, 0, :, None, None] * u1 + a[:, 1, :, None, None] * u2
    torch.testing.assert_close(block(x), expected)


def test_resnest_follows_the_published_resnest50_layout():
    model = build_backbone("resnest50")
    stem_convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem_convs] == [
        (3, 32, (3, 3), (2, 2)),
        (32, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert build_backbone("resnest101").conv1[6].out_channels == 128
    first = model.layer1[0]
    assert first.avd_layer is None and isinstance(first.downsample[0], nn.Identity)
    strided = build_backbone("resnest50", last_stride=2)
    for stage in (2, 3, 4):
        block = getattr(strided, f"layer{stage}")[0]
        assert block.conv2.conv.stride == (1, 1)
        assert (block.avd_layer.kernel_size, block.avd_layer.stride) == (3, 2)
        assert isinstance(block.downsample[0], nn.AvgPool2d) and block.downsample[1].stride == (1, 1)
    # last_stride=1: stage 4 keeps its resolution without any pooling
    assert model.layer4[0].avd_layer is None and isinstance(model.layer4[0].downsample[0], nn.Identity)


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_safetensors_and_model_artifact_round_trip(name):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=name, num_classes=4)
    model = build_reid_model(cfg).train()
    if name in SMALL:  # move the running statistics away from their initial values
        with torch.no_grad():
            model(torch.randn(4, 3, 64, 32))
    model.eval()
    x = torch.randn(1, 3, 64, 32)
    with tempfile.TemporaryDirectory() as tmp:  # full-size weights are large: removed right away
        directory = Path(tmp)
        weights = directory / "backbone.safetensors"
        save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(weights))
        fresh = build_backbone(name)
        report = load_pretrained(fresh, weights, strict=True)
        assert report.renamed == {} and report.dropped == []
        _assert_loaded(fresh, model.backbone.state_dict())
        save_model_artifact(directory, model, cfg, height=64, width=32, mean=(0.5,) * 3, std=(0.2,) * 3)
        loaded, meta = load_model_artifact(directory)
    assert meta["model"]["backbone"] == name
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("name", ALL)
def test_our_own_keys_are_left_alone_by_the_remap(name):
    model = build_backbone(name)
    assert all(model.remap_pretrained_key(key) == key for key in model.state_dict())


# --- public checkpoint layouts, written from the published module names ---------------------------


def to_torchvision_densenet_keys(
    state: dict[str, torch.Tensor], legacy: bool = False
) -> dict[str, torch.Tensor]:
    """torchvision: everything under ``features.``; legacy checkpoints spell ``norm1`` as ``norm.1``."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^stage\d\.(denseblock\d|transition\d|norm5)\.", r"features.\1.", key)
        key = re.sub(r"^(conv0|norm0)\.", r"features.\1.", key)
        if legacy:
            key = re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)
        renamed[key] = value
    return renamed


def to_ibn_net_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """IBN-Net: the children of a split norm are ``IN`` and ``BN``."""
    return {k.replace(".inorm.", ".IN.").replace(".bn.", ".BN."): v for k, v in state.items()}


def _save(path: Path, state: dict[str, torch.Tensor]) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 100}, path)


def _load_and_check(name: str, path: Path, ours: dict[str, torch.Tensor], dropped: set[str]) -> None:
    fresh = build_backbone(name)
    report = load_pretrained(fresh, path)
    path.unlink()  # pytest keeps recent tmp dirs: do not leave 100 MB checkpoints behind
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert set(report.dropped) == dropped
    assert len(report.loaded) == len(ours)
    _assert_loaded(fresh, ours)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_official_and_timm_resnest_layout_loads(tmp_path, suffix):
    """The official ResNeSt code and timm share these names; ``rsoftmax`` has no parameters."""
    name = "resnest50" if suffix == ".pth" else "resnest26_x0_25"
    ours = _randomized_state(build_backbone(name))
    public = dict(ours)
    if name == "resnest50":
        expected_shapes = {
            "conv1.0.weight": (32, 3, 3, 3),
            "conv1.1.running_mean": (32,),
            "conv1.3.weight": (32, 32, 3, 3),
            "conv1.4.bias": (32,),
            "conv1.6.weight": (64, 32, 3, 3),
            "bn1.weight": (64,),
            "layer1.0.conv1.weight": (64, 64, 1, 1),
            "layer1.0.conv2.conv.weight": (128, 32, 3, 3),
            "layer1.0.conv2.bn0.running_var": (128,),
            "layer1.0.conv2.fc1.weight": (32, 64, 1, 1),
            "layer1.0.conv2.fc1.bias": (32,),
            "layer1.0.conv2.bn1.running_mean": (32,),
            "layer1.0.conv2.fc2.weight": (128, 32, 1, 1),
            "layer1.0.conv2.fc2.bias": (128,),
            "layer1.0.conv3.weight": (256, 64, 1, 1),
            "layer1.0.downsample.1.weight": (256, 64, 1, 1),
            "layer1.0.downsample.2.weight": (256,),
            "layer2.0.conv2.fc1.weight": (64, 128, 1, 1),
            "layer4.0.conv2.conv.weight": (1024, 256, 3, 3),
            "layer4.0.downsample.1.weight": (2048, 1024, 1, 1),
            "layer4.2.bn3.bias": (2048,),
        }
        for key, shape in expected_shapes.items():
            assert tuple(public[key].shape) == shape, key
        public = {f"module.{k}": v for k, v in public.items()}
        public["module.fc.weight"] = torch.zeros(1000, 2048)
        public["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / f"{name}{suffix}"
    _save(path, public)
    _load_and_check(name, path, ours, {"fc.weight", "fc.bias"} if name == "resnest50" else set())


@pytest.mark.parametrize(
    ("name", "legacy", "suffix"), [("densenet121", False, ".pth"), ("densenet121", True, ".safetensors")]
)
def test_torchvision_densenet_layout_loads(tmp_path, name, legacy, suffix):
    ours = _randomized_state(build_backbone(name))
    public = to_torchvision_densenet_keys(ours, legacy=legacy)
    layer = "features.denseblock1.denselayer1"
    spelled = {"norm1": f"{layer}.norm.1", "conv1": f"{layer}.conv.1", "conv2": f"{layer}.conv.2"}
    if not legacy:
        spelled = {k: f"{layer}.{k}" for k in spelled}
    expected_shapes = {
        "features.conv0.weight": (64, 3, 7, 7),
        "features.norm0.running_var": (64,),
        f"{spelled['norm1']}.weight": (64,),
        f"{spelled['conv1']}.weight": (128, 64, 1, 1),
        f"{spelled['conv2']}.weight": (32, 128, 3, 3),
        "features.transition1.norm.weight": (256,),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.transition3.conv.weight": (512, 1024, 1, 1),
        "features.norm5.bias": (1024,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(public[key].shape) == shape, key
    public["classifier.weight"] = torch.zeros(1000, 1024)
    public["classifier.bias"] = torch.zeros(1000)
    path = tmp_path / f"{name}{suffix}"
    _save(path, public)
    _load_and_check(name, path, ours, {"classifier.weight", "classifier.bias"})


@pytest.mark.parametrize(
    ("name", "legacy", "suffix"),
    [("densenet169_ibn_a", False, ".pth"), ("densenet121_ibn_a", True, ".safetensors")],
)
def test_ibn_net_densenet_layout_loads(tmp_path, name, legacy, suffix):
    ours = _randomized_state(build_backbone(name))
    public = to_ibn_net_keys(to_torchvision_densenet_keys(ours, legacy=legacy))
    norm1 = "norm.1" if legacy else "norm1"
    assert tuple(public[f"features.denseblock1.denselayer1.{norm1}.BN.weight"].shape) == (38,)
    assert tuple(public[f"features.denseblock1.denselayer1.{norm1}.IN.bias"].shape) == (26,)
    assert f"features.denseblock3.denselayer4.{norm1}.BN.running_mean" in public
    assert f"features.denseblock1.denselayer2.{norm1}.weight" in public  # not an IBN layer
    assert f"features.denseblock4.denselayer1.{norm1}.weight" in public  # block 4 has none
    path = tmp_path / f"{name}{suffix}"
    _save(path, {f"module.{k}": v for k, v in public.items()})
    _load_and_check(name, path, ours, set())


def test_torchvision_resnext_layout_loads(tmp_path):
    ours = _randomized_state(build_backbone("resnext50_32x4d"))
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (128, 64, 1, 1),
        "layer1.0.conv2.weight": (128, 4, 3, 3),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.running_mean": (256,),
        "layer4.0.conv2.weight": (1024, 32, 3, 3),
        "layer4.2.bn3.weight": (2048,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(ours[key].shape) == shape, key
    public = {**ours, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnext50_32x4d.pth"
    _save(path, public)
    _load_and_check("resnext50_32x4d", path, ours, {"fc.weight", "fc.bias"})


@pytest.mark.parametrize(
    ("name", "suffix"), [("resnext50_ibn_a", ".safetensors"), ("resnext26_ibn_a_x0_25", ".pth")]
)
def test_ibn_net_resnext_layout_loads(tmp_path, name, suffix):
    ours = _randomized_state(build_backbone(name))
    public = to_ibn_net_keys(ours)
    if name == "resnext50_ibn_a":
        assert tuple(public["layer1.0.bn1.IN.weight"].shape) == (64,)
        assert tuple(public["layer3.5.bn1.BN.running_var"].shape) == (256,)  # half of 512
        assert "layer4.0.bn1.weight" in public and "layer1.0.bn2.weight" in public
    path = tmp_path / f"{name}{suffix}"
    _save(path, public)
    _load_and_check(name, path, ours, set())
