"""Random domain styles: unseen targets drawn from a wide, documented distribution.

A benchmark whose targets are a handful of hand-written presets can be tuned to them, knowingly or
not. :class:`StyleDistribution` describes a wide family of camera networks (colour cast, brightness,
contrast, saturation, hue, blur, noise, JPEG quality, background palette and texture, occlusion,
per-camera variation), and :func:`draw_domains` draws ``count`` of them from a seed. Each drawn
domain is a *template* preset (sizes, split, scene) with its look replaced through the ordinary
dotted-key overrides of the ``synth`` stage, so a drawn target is recorded in params and lineage like
any other domain and regenerates to the same bytes. The distribution is documented in docs/synth.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from reidflow.config import StrictModel

TEXTURES = ("flat", "gradient", "noise", "stripes", "bricks")


class Range(StrictModel):
    """A closed interval ``[low, high]``; ``log: true`` draws uniformly in log space (for factors)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low={self.low} must be <= high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log ranges need low > 0, got {self.low}")
        return self

    def draw(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


def _r(low: float, high: float, log: bool = False) -> Any:
    return Field(default_factory=lambda: Range(low=low, high=high, log=log))


class StyleDistribution(StrictModel):
    """Independent draws per knob; ranges cover (and go past) the packaged presets."""

    cast: Range = _r(0.7, 1.35, log=True)  # per-channel RGB gain
    brightness: Range = _r(0.5, 1.4, log=True)
    contrast: Range = _r(0.45, 1.7, log=True)
    saturation: Range = _r(0.05, 1.6)
    hue_shift: Range = _r(-40.0, 40.0)
    blur_sigma: Range = _r(0.0, 1.3)
    noise_std: Range = _r(0.0, 0.08)
    jpeg_quality: Range = _r(12, 95)
    occlusion_probability: Range = _r(0.05, 0.4)
    camera_jitter: Range = _r(0.0, 1.0)  # 0 = identical cameras, 1 = the strongest preset's variation
    palette_size: tuple[int, int] = (3, 6)
    textures: list[str] = Field(default_factory=lambda: list(TEXTURES))

    @model_validator(mode="after")
    def _check(self) -> StyleDistribution:
        unknown = sorted(set(self.textures) - set(TEXTURES))
        if unknown or not self.textures:
            raise ValueError(
                f"textures: expected a non-empty subset of {list(TEXTURES)}, got {self.textures}"
            )
        low, high = self.palette_size
        if not 1 <= low <= high:
            raise ValueError(
                f"palette_size: expected [min, max] with 1 <= min <= max, got {self.palette_size}"
            )
        return self


# per-camera variation of the strongest preset (target_city); camera_jitter scales it
_MAX_CAMERA_VARIATION = {
    "gain_jitter": 0.1,
    "brightness_jitter": 0.15,
    "contrast_jitter": 0.12,
    "saturation_jitter": 0.2,
    "hue_jitter": 10.0,
    "blur_jitter": 0.6,
    "noise_jitter": 0.02,
    "jpeg_quality_jitter": 25,
}


def draw_style_overrides(rng: np.random.Generator, dist: StyleDistribution) -> dict[str, Any]:
    """Dotted-key overrides of one drawn look (style, background, occlusion, camera variation)."""
    palette_n = int(rng.integers(dist.palette_size[0], dist.palette_size[1] + 1))
    base = rng.uniform(30, 230, size=3)  # a dominant scene colour, then variations around it
    palette = [[int(np.clip(c + rng.normal(0, 35), 0, 255)) for c in base] for _ in range(palette_n)]
    jitter = dist.camera_jitter.draw(rng)
    variation = {
        f"camera_variation.{k}": (round(v * jitter) if isinstance(v, int) else round(v * jitter, 4))
        for k, v in _MAX_CAMERA_VARIATION.items()
    }
    return {
        "style.gain": [round(dist.cast.draw(rng), 3) for _ in range(3)],
        "style.brightness": round(dist.brightness.draw(rng), 3),
        "style.contrast": round(dist.contrast.draw(rng), 3),
        "style.saturation": round(dist.saturation.draw(rng), 3),
        "style.hue_shift": round(dist.hue_shift.draw(rng), 1),
        "style.blur_sigma": round(dist.blur_sigma.draw(rng), 3),
        "style.noise_std": round(dist.noise_std.draw(rng), 4),
        "style.jpeg_quality": round(dist.jpeg_quality.draw(rng)),
        "style.background.palette": palette,
        "style.background.texture": str(rng.choice(dist.textures)),
        "scene.occlusion_probability": round(dist.occlusion_probability.draw(rng), 3),
        **variation,
    }


class DrawnDomains(StrictModel):
    """``count`` unseen domains drawn from ``distribution`` with ``seed``, named ``<prefix>_<i>``."""

    count: int = Field(0, ge=0)
    seed: int = 0
    prefix: str = Field("drawn", pattern=r"^[a-z][a-z0-9_]{0,40}$")
    template: str = Field("target_city", description="preset (or YAML) giving sizes, split and scene")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted-key overrides applied to every drawn domain (sizes)"
    )
    distribution: StyleDistribution = Field(default_factory=StyleDistribution)

    def names(self) -> list[str]:
        return [f"{self.prefix}_{i:02d}" for i in range(self.count)]


def draw_domains(cfg: DrawnDomains) -> list[dict[str, Any]]:
    """``synth.domains`` entries (``{preset, overrides}``) of the drawn domains; domain ``i`` depends
    only on ``(seed, i)``, so adding domains never changes the earlier ones."""
    entries = []
    for i, name in enumerate(cfg.names()):
        rng = np.random.default_rng((cfg.seed, i))
        overrides = {**cfg.overrides, **draw_style_overrides(rng, cfg.distribution), "name": name}
        overrides["description"] = f"drawn unseen style {i} (seed {cfg.seed})"
        entries.append({"preset": cfg.template, "overrides": overrides})
    return entries
