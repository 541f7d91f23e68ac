"""Batched kornia transforms: shapes, value ranges, each op's effect, determinism."""

from __future__ import annotations

import pytest
import torch

from reidflow.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformConfig,
    build_eval_transform,
    build_train_transform,
)
from reidflow.errors import ConfigError

H, W = 32, 16
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
OFF = {"flip_p": 0.0, "pad": 0, "erasing_p": 0.0, "jitter_p": 0.0, "autoaugment": False}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, H, W), dtype=torch.uint8, generator=generator)


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN) / STD


def test_eval_transform_normalizes_and_resizes() -> None:
    x = _batch()
    out = build_eval_transform(TransformConfig(height=H, width=W))(x)
    assert out.dtype == torch.float32 and out.shape == (6, 3, H, W)
    torch.testing.assert_close(out, _normalized(x))
    resized = build_eval_transform({"height": 2 * H, "width": 2 * W})(x)
    assert resized.shape == (6, 3, 2 * H, 2 * W)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert (resized >= low - 1e-5).all() and (resized <= high + 1e-5).all()


def test_all_ops_disabled_is_the_eval_transform() -> None:
    x = _batch()
    torch.testing.assert_close(
        build_train_transform(TransformConfig(height=H, width=W, **OFF))(x), _normalized(x)
    )


def test_flip_with_probability_one_mirrors_every_image() -> None:
    x = _batch()
    cfg = TransformConfig(height=H, width=W, **{**OFF, "flip_p": 1.0})
    torch.testing.assert_close(build_train_transform(cfg)(x), _normalized(x.flip(-1)))


def test_pad_and_crop_translate_within_the_padding() -> None:
    x = _batch(n=8)
    pad = 3
    cfg = TransformConfig(height=H, width=W, **{**OFF, "pad": pad})
    torch.manual_seed(0)
    out = build_train_transform(cfg)(x) * STD + MEAN  # back to [0, 1]
    padded = torch.nn.functional.pad(x.float() / 255, (pad, pad, pad, pad))
    moved = 0
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.allclose(out[i], padded[i, :, dy : dy + H, dx : dx + W], atol=1e-5)
        ]
        assert matches, f"image {i} is not a crop of its padded version"
        moved += (pad, pad) not in matches
    assert moved > 0


def test_random_erasing_writes_zeros_after_normalization() -> None:
    x = _batch()
    cfg = TransformConfig(height=H, width=W, **{**OFF, "erasing_p": 1.0})
    torch.manual_seed(1)
    out = build_train_transform(cfg)(x)
    reference = _normalized(x)
    for i in range(len(x)):
        changed = ~torch.isclose(out[i], reference[i])
        assert changed.any() and (out[i][changed] == 0).all()


@pytest.mark.parametrize("autoaugment", [False, True])
def test_full_train_transform_is_deterministic_under_manual_seed(autoaugment: bool) -> None:
    x = _batch(n=8)
    cfg = TransformConfig(height=H, width=W, jitter_p=0.8, saturation=0.2, hue=0.05, autoaugment=autoaugment)
    transform = build_train_transform(cfg)
    torch.manual_seed(7)
    first = transform(x)
    torch.manual_seed(7)
    second = transform(x)
    torch.manual_seed(8)
    third = transform(x)
    assert first.shape == (8, 3, H, W) and torch.isfinite(first).all()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, third)
    assert not torch.allclose(first, _normalized(x))


def test_colour_jitter_changes_colours_only_when_enabled() -> None:
    x = _batch()
    cfg = TransformConfig(height=H, width=W, **{**OFF, "jitter_p": 1.0, "brightness": 0.5})
    torch.manual_seed(2)
    out = build_train_transform(cfg)(x)
    assert not torch.allclose(out, _normalized(x))


def test_float_input_in_unit_range_matches_uint8_input() -> None:
    x = _batch()
    transform = build_eval_transform(TransformConfig(height=H, width=W))
    torch.testing.assert_close(transform(x.float() / 255), transform(x))


def test_bad_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"transforms\.flip_p"):
        TransformConfig.parse({"flip_p": 1.5})
    with pytest.raises(ConfigError, match=r"transforms\.colour"):
        build_train_transform({"colour": 1})
    with pytest.raises(ConfigError, match="erasing_scale"):
        TransformConfig.parse({"erasing_scale": (0.5, 0.1)})
    with pytest.raises(ConfigError, match="B x 3 x H x W"):
        build_eval_transform(TransformConfig(height=H, width=W))(torch.zeros(3, H, W, dtype=torch.uint8))
