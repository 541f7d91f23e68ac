"""Pretrained loading from public key layouts (checkpoints made here by renaming our own weights)."""

from __future__ import annotations

import hashlib
import logging
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from reidflow.errors import ConfigError, DataError
from reidflow.models.norms import BatchInstanceNorm2d, convert_norms
from reidflow.models.pretrained import load_pretrained, read_state_dict, redact_url
from reidflow.models.registry import build_backbone
from reidflow.models.reid_model import ReIDModel


def _randomized_state(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's state with every float tensor replaced by random values (so a load is visible)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.rand(v.shape, generator=generator, dtype=v.dtype) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def _assert_loaded(model: nn.Module, ours: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for key, value in ours.items():
        torch.testing.assert_close(state[key], value, msg=f"key {key} was not loaded")


# --- public layouts, written from the published module names --------------------------------------


def to_ibn_net_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """IBN-Net: split norm children ``IN``/``BN``; the IBN-b norm after the residual sum is ``IN``."""
    renamed = {}
    for key, value in state.items():
        key = key.replace(".post_sum_norm.", ".IN.").replace(".inorm.", ".IN.")
        renamed[re.sub(r"\.bn1\.bn\.", ".bn1.BN.", key)] = value
    return renamed


def to_torchvision_mobilenetv2_keys(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """torchvision: ``features.0`` = stem (conv ``.0``, BN ``.1``), ``features.1..17`` blocks, ``features.18``."""
    units = ["stem"] + [
        f"{s}.{i}"
        for s in ("stage1", "stage2", "stage3", "stage4")
        for i in range(len(model.get_submodule(s)))
    ]
    renamed = {}
    for key, value in state.items():
        unit = next(u for u in units if key.startswith(u + "."))
        index, rest = units.index(unit), key[len(unit) + 1 :]
        block = model.get_submodule(unit)
        if not hasattr(block, "depthwise"):  # stem and the final 1×1 conv
            rest = rest.replace("conv.", "0.").replace("bn.", "1.")
        elif block.expand is not None:
            for ours, public in (
                ("expand.conv.", "conv.0.0."),
                ("expand.bn.", "conv.0.1."),
                ("depthwise.conv.", "conv.1.0."),
                ("depthwise.bn.", "conv.1.1."),
                ("project.conv.", "conv.2."),
                ("project.bn.", "conv.3."),
            ):
                rest = rest.replace(ours, public)
        else:
            for ours, public in (
                ("depthwise.conv.", "conv.0.0."),
                ("depthwise.bn.", "conv.0.1."),
                ("project.conv.", "conv.1."),
                ("project.bn.", "conv.2."),
            ):
                rest = rest.replace(ours, public)
        renamed[f"features.{index}.{rest}"] = value
    return renamed


def to_public_osnet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """deep-person-reid ``osnet.py``: streams are ``conv2a`` (a bare Lite 3×3) and ``conv2b..d`` (Sequential)."""
    renamed = {}
    for key, value in state.items():
        key = key.replace(".streams.0.0.", ".conv2a.")
        for index, letter in ((1, "b"), (2, "c"), (3, "d")):
            key = key.replace(f".streams.{index}.", f".conv2{letter}.")
        renamed[key] = value
    return renamed


def to_public_osnet_ain_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """deep-person-reid ``osnet_ain.py``: ``conv2.<t>.layers.<i>`` streams, residual IN called ``IN``,
    transitions outside the stages as ``pool2``/``pool3``."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^conv([23])\.2\.", r"pool\1.", key)
        key = re.sub(r"\.streams\.(\d+)\.", r".conv2.\1.layers.", key)
        renamed[key.replace(".residual_norm.", ".IN.")] = value
    return renamed


# --- tests ----------------------------------------------------------------------------------------


def test_torchvision_resnet50_pth_with_module_prefix_and_fc(tmp_path, caplog):
    model = build_backbone("resnet50")
    ours = _randomized_state(model)
    public = {f"module.{k}": v for k, v in ours.items()}
    public["module.fc.weight"] = torch.zeros(1000, 2048)
    public["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet50-public.pth"
    torch.save({"state_dict": public, "epoch": 90}, path)
    fresh = build_backbone("resnet50")
    with caplog.at_level(logging.INFO, logger="reidflow.models.pretrained"):
        report = load_pretrained(fresh, str(path))
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == len(ours)
    _assert_loaded(fresh, ours)
    assert "0 missing" in caplog.text and "2 dropped" in caplog.text


def test_torchvision_key_names_are_what_our_resnet_uses():
    keys = build_backbone("resnet50").state_dict()
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "layer4.2.bn3.bias",
        "layer3.5.conv2.weight",
    ):
        assert key in keys


@pytest.mark.parametrize("name", ["resnet50_ibn_a", "resnet50_ibn_b"])
def test_ibn_net_layout_loads(tmp_path, name):
    model = build_backbone(name)
    ours = _randomized_state(model)
    public = to_ibn_net_keys(ours)
    if name.endswith("_a"):
        assert "layer1.0.bn1.IN.weight" in public and "layer3.5.bn1.BN.running_mean" in public
    else:
        assert "layer1.2.IN.weight" in public and "layer2.3.IN.bias" in public
    path = tmp_path / f"{name}.safetensors"
    save_file(public, str(path))
    fresh = build_backbone(name)
    report = load_pretrained(fresh, path)
    assert report.missing == [] and report.unexpected == [] and report.dropped == []
    _assert_loaded(fresh, ours)


def test_torchvision_mobilenetv2_layout_loads(tmp_path):
    model = build_backbone("mobilenetv2_x1_0")
    ours = _randomized_state(model)
    public = to_torchvision_mobilenetv2_keys(model, ours)
    # spot checks against torchvision's published mobilenet_v2 state dict
    expected_shapes = {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.running_mean": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.weight": (16,),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.bias": (24,),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.weight": (1280,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(public[key].shape) == shape, key
    public["classifier.1.weight"] = torch.zeros(1000, 1280)
    public["classifier.1.bias"] = torch.zeros(1000)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(public, path)
    fresh = build_backbone("mobilenetv2_x1_0")
    report = load_pretrained(fresh, path)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.dropped) == ["classifier.1.bias", "classifier.1.weight"]
    _assert_loaded(fresh, ours)


def test_public_osnet_layout_loads_and_drops_fc_and_classifier(tmp_path):
    model = build_backbone("osnet_x1_0")
    public = to_public_osnet_keys(_randomized_state(model))
    expected_shapes = {
        "conv1.conv.weight": (64, 3, 7, 7),
        "conv2.0.conv1.conv.weight": (64, 64, 1, 1),
        "conv2.0.conv2a.conv1.weight": (64, 64, 1, 1),
        "conv2.0.conv2a.conv2.weight": (64, 1, 3, 3),
        "conv2.0.conv2d.3.bn.running_var": (64,),
        "conv2.0.gate.fc1.weight": (4, 64, 1, 1),
        "conv2.0.gate.fc2.bias": (64,),
        "conv2.0.conv3.conv.weight": (256, 64, 1, 1),
        "conv2.0.downsample.conv.weight": (256, 64, 1, 1),
        "conv2.2.0.conv.weight": (256, 256, 1, 1),
        "conv4.1.conv2c.2.conv2.weight": (128, 1, 3, 3),
        "conv5.conv.weight": (512, 512, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(public[key].shape) == shape, key
    small = build_backbone("osnet_x0_25")
    ours = _randomized_state(small, seed=1)
    public = to_public_osnet_keys(ours)
    public.update(
        {
            "fc.0.weight": torch.zeros(512, 128),
            "fc.0.bias": torch.zeros(512),
            "fc.1.weight": torch.zeros(512),
            "classifier.weight": torch.zeros(1000, 512),
        }
    )
    path = tmp_path / "osnet_x0_25_imagenet.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in public.items()}, "epoch": 1}, path)
    fresh = build_backbone("osnet_x0_25")
    report = load_pretrained(fresh, path)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.dropped) == ["classifier.weight", "fc.0.bias", "fc.0.weight", "fc.1.weight"]
    _assert_loaded(fresh, ours)


def test_public_osnet_ain_layout_loads(tmp_path):
    model = build_backbone("osnet_ain_x1_0")
    ours = _randomized_state(model)
    public = to_public_osnet_ain_keys(ours)
    assert "conv2.0.conv2.3.layers.3.conv2.weight" in public and "conv2.0.IN.weight" in public
    assert "pool2.0.conv.weight" in public and "pool3.0.bn.running_mean" in public
    assert "conv2.0.conv3.bn.weight" not in public  # AIN blocks: IN replaces conv3's norm
    path = tmp_path / "osnet_ain_x1_0.safetensors"
    save_file(public, str(path))
    fresh = build_backbone("osnet_ain_x1_0")
    report = load_pretrained(fresh, path)
    assert report.missing == [] and report.unexpected == []
    _assert_loaded(fresh, ours)


def test_file_url_is_downloaded_into_the_cache_and_reused(tmp_path):
    model = build_backbone("osnet_x0_25")
    ours = _randomized_state(model)
    source = tmp_path / "src" / "weights.safetensors"
    source.parent.mkdir()
    save_file(ours, str(source))
    cache = tmp_path / "cache"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    report = load_pretrained(build_backbone("osnet_x0_25"), source.as_uri(), cache_dir=cache, sha256=digest)
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("-weights.safetensors")
    assert report.file == str(cached[0]) and report.missing == []
    source.unlink()  # the second load must come from the cache
    fresh = build_backbone("osnet_x0_25")
    load_pretrained(fresh, source.as_uri(), cache_dir=cache)
    _assert_loaded(fresh, ours)
    with pytest.raises(DataError, match="cannot download"):
        load_pretrained(fresh, (tmp_path / "missing.pth").as_uri(), cache_dir=cache)
    with pytest.raises(DataError, match="sha256"):
        load_pretrained(fresh, source.as_uri(), cache_dir=cache, sha256="0" * 64)
    assert list(cache.iterdir()) == []  # a file failing verification is not kept


def test_build_backbone_with_pretrained_path(tmp_path):
    ours = _randomized_state(build_backbone("mobilenetv2_x0_5"))
    path = tmp_path / "w.safetensors"
    save_file(ours, str(path))
    _assert_loaded(build_backbone("mobilenetv2_x0_5", pretrained=str(path)), ours)


def test_corrupt_and_unsafe_files_give_clear_errors(tmp_path):
    garbage = tmp_path / "broken.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(
        DataError, match="broken.pth: not a readable PyTorch weights file .*Unsupported operand"
    ):
        read_state_dict(garbage)
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(100)}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(DataError, match="truncated.safetensors"):
        read_state_dict(truncated)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _NotATensor()}, unsafe)
    with pytest.raises(DataError, match="unsafe.pth: refusing to load: .*_NotATensor"):
        read_state_dict(unsafe)
    no_tensors = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, no_tensors)
    with pytest.raises(DataError, match="no state dict found"):
        read_state_dict(no_tensors)
    with pytest.raises(ConfigError, match="not found"):
        load_pretrained(build_backbone("osnet_x0_25"), tmp_path / "nope.safetensors")
    with pytest.raises(ConfigError, match="unsupported scheme 's3'"):
        load_pretrained(build_backbone("osnet_x0_25"), "s3://bucket/w.safetensors")


class _NotATensor:
    pass


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    path = tmp_path / "x0_25.safetensors"
    save_file(build_backbone("osnet_x0_25").state_dict(), str(path))
    with pytest.raises(
        ConfigError,
        match=r"^pretrained .*x0_25.safetensors: key 'conv1\.conv\.weight' \(-> 'conv1\.conv\.weight'\) "
        r"has shape \(16, 3, 7, 7\) in the checkpoint but \(32, 3, 7, 7\) in the model; .*more\)$",
    ):
        load_pretrained(build_backbone("osnet_x0_5"), path)


def test_bn_checkpoint_into_converted_bin_model_and_strict(tmp_path):
    ours = _randomized_state(build_backbone("osnet_x0_25"))
    path = tmp_path / "bn.safetensors"
    save_file(ours, str(path))
    model = convert_norms(build_backbone("osnet_x0_25"), "bin")
    report = load_pretrained(model, path)
    assert report.unexpected == []
    assert report.missing and all(k.endswith(".rho") for k in report.missing)  # only the new gates
    layer = model.conv1.bn
    assert isinstance(layer, BatchInstanceNorm2d)
    torch.testing.assert_close(layer.bn.running_mean, ours["conv1.bn.running_mean"])
    torch.testing.assert_close(layer.weight.data, ours["conv1.bn.weight"])
    with pytest.raises(ConfigError, match="strict loading failed"):
        load_pretrained(model, path, strict=True)


def test_whole_reid_model_checkpoint_loads_backbone_only(tmp_path):
    torch.manual_seed(0)
    trained = ReIDModel(build_backbone("osnet_x0_25"), num_classes=5)
    ours = _randomized_state(trained)
    path = tmp_path / "reid.safetensors"
    save_file(ours, str(path))
    target = ReIDModel(build_backbone("osnet_x0_25"), num_classes=9)  # different classifier size
    report = load_pretrained(target, path)
    assert report.missing == [] and report.unexpected == []
    assert set(report.dropped) == {k for k in ours if not k.startswith("backbone.")}
    _assert_loaded(
        target.backbone, {k[len("backbone.") :]: v for k, v in ours.items() if k.startswith("backbone.")}
    )


def test_custom_mapping_and_redaction(tmp_path):
    ours = _randomized_state(build_backbone("osnet_x0_25"))
    path = tmp_path / "prefixed.safetensors"
    save_file({f"encoder.{k}": v for k, v in ours.items()}, str(path))
    fresh = build_backbone("osnet_x0_25")
    report = load_pretrained(fresh, path, mapping=lambda k: k.removeprefix("encoder."))
    assert report.missing == [] and report.unexpected == []
    assert load_pretrained(build_backbone("osnet_x0_25"), path, mapping="none").unexpected  # nothing matched
    with pytest.raises(ConfigError, match="mapping must be"):
        load_pretrained(fresh, path, mapping="guess")
    assert redact_url("https://user:pw@host:8443/w.pth?X-Amz-Signature=abc#f") == "https://host:8443/w.pth"


def test_backbone_placeholder_in_the_pretrained_path(tmp_path):
    """One `model.pretrained` setting serves a chain over several backbones: `{backbone}` is filled in."""
    from reidflow.models.reid_model import build_reid_model

    for name in ("osnet_x0_25", "resnest26_x0_25"):
        save_file(_randomized_state(build_backbone(name), seed=3), str(tmp_path / f"{name}.safetensors"))
        model = build_reid_model(
            {"backbone": name, "num_classes": 4, "pretrained": str(tmp_path / "{backbone}.safetensors")}
        )
        _assert_loaded(model.backbone, read_state_dict(tmp_path / f"{name}.safetensors"))
