"""Batched image augmentation on the training device (kornia), plus normalization.

Workers only decode and resize (deterministic, so a resumed run sees the same pixels); all random
augmentation happens here, on whole batches, drawing from torch's RNG, so it is reproducible under
``torch.manual_seed`` and runs on whatever device the batch lives on.

Order (train): AutoAugment -> horizontal flip -> pad + random crop -> colour jitter -> normalize ->
random erasing (after normalization, so erased pixels are the dataset mean, value 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.augmentation.auto import AutoAugment
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from reidflow.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransformConfig(BaseModel):
    """Every augmentation toggle and strength; a probability of 0 (or pad 0) disables the op."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(256, gt=0)
    width: int = Field(128, gt=0)
    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    pad: int = Field(10, ge=0)
    erasing_p: float = Field(0.5, ge=0.0, le=1.0)
    erasing_scale: tuple[float, float] = (0.02, 0.4)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    jitter_p: float = Field(0.0, ge=0.0, le=1.0)
    brightness: float = Field(0.2, ge=0.0)
    contrast: float = Field(0.15, ge=0.0)
    saturation: float = Field(0.0, ge=0.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)
    autoaugment: bool = False
    autoaugment_policy: Literal["imagenet", "cifar10", "svhn"] = "imagenet"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _check_ranges(self) -> TransformConfig:
        low, high = self.erasing_scale
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"erasing_scale={self.erasing_scale}: expected 0 < low <= high < 1")
        if not 0.0 < self.erasing_ratio[0] <= self.erasing_ratio[1]:
            raise ValueError(f"erasing_ratio={self.erasing_ratio}: expected 0 < low <= high")
        if min(self.std) <= 0:
            raise ValueError(f"std={self.std}: expected positive values")
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str = "transforms") -> TransformConfig:
        """Validate a params section, turning pydantic errors into a :class:`ConfigError`."""
        from reidflow.config import validate_as

        return validate_as(cls, data, where)


def to_float_batch(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``B x 3 x H x W`` uint8 (0-255) or float (0-1) -> float in [0, 1] at ``height x width``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"transform input: expected a B x 3 x H x W batch, got shape {tuple(images.shape)}")
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers follow ``.to(device)``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BatchTransform(nn.Module):
    """uint8/float batch -> float batch at the configured size, augmented, normalized."""

    def __init__(
        self, cfg: TransformConfig, steps: list[nn.Module], after_normalize: list[nn.Module]
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.steps = nn.Sequential(*steps)
        self.normalize = Normalize(cfg.mean, cfg.std)
        self.after_normalize = nn.Sequential(*after_normalize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_batch(images, self.cfg.height, self.cfg.width)
        x = self.steps(x).clamp_(0.0, 1.0)
        return self.after_normalize(self.normalize(x))


def build_train_transform(cfg: TransformConfig | Mapping[str, Any]) -> BatchTransform:
    """The training augmentation pipeline described in the module docstring."""
    if not isinstance(cfg, TransformConfig):
        cfg = TransformConfig.parse(cfg)
    steps: list[nn.Module] = []
    if cfg.autoaugment:
        steps.append(AutoAugment(cfg.autoaugment_policy))
    if cfg.flip_p > 0:
        steps.append(K.RandomHorizontalFlip(p=cfg.flip_p))
    if cfg.pad > 0:
        steps.append(K.RandomCrop((cfg.height, cfg.width), padding=cfg.pad, fill=0.0))
    if cfg.jitter_p > 0 and (cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue):
        steps.append(K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.jitter_p))
    after: list[nn.Module] = []
    if cfg.erasing_p > 0:
        after.append(
            K.RandomErasing(scale=cfg.erasing_scale, ratio=cfg.erasing_ratio, value=0.0, p=cfg.erasing_p)
        )
    return BatchTransform(cfg, steps, after)


def build_eval_transform(cfg: TransformConfig | Mapping[str, Any]) -> BatchTransform:
    """Resize (if needed) and normalize only."""
    if not isinstance(cfg, TransformConfig):
        cfg = TransformConfig.parse(cfg)
    return BatchTransform(cfg, [], [])
