"""ResNeXt (Xie et al. 2017) 50-32×4d and 101-32×8d, plain and IBN-a (Pan et al. 2018).

A ResNeXt bottleneck is a ResNet bottleneck (v1.5: stride on the 3×3) whose 3×3 conv is grouped:
``cardinality`` groups of ``base_width × 2^(stage-1)`` channels each (32×4d: 128, 256, 512, 1024).
Module names follow torchvision (``conv1, bn1, layerN.i.{conv1,bn1,conv2,bn2,conv3,bn3},
layerN.0.downsample.{0,1}``), which timm and the public IBN-Net code share; IBN-Net names the halves
of its split norm ``IN``/``BN`` (ours: ``inorm``/``bn``), renamed by
:meth:`ResNeXt.remap_pretrained_key`.

IBN-a (as in IBN-Net's ``resnext_ibn``): the first norm of every bottleneck of stages 1-3 is
``ibn`` (IN on the first half of the channels, BN on the rest); stage 4 and the stem stay ``norm``.

No final FC: the backbone ends at ``layer4`` (2048 channels); the published counts (50-32×4d 25.0M,
101-32×8d 88.8M) include the 1000-way FC. ``last_stride`` is the stride of stage 4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from reidflow.models.backbones.base import Backbone
from reidflow.models.norms import make_norm
from reidflow.models.registry import register_backbone

_EXPANSION = 4


@dataclass(frozen=True)
class ResNeXtSpec:
    """Depths per stage, bottleneck planes per stage, groups, and channels per group in stage 1."""

    depths: tuple[int, int, int, int]
    cardinality: int
    base_width: int
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)

    def width(self, stage_index: int) -> int:
        """Channels of the grouped 3×3 conv in stage ``stage_index`` (0-based); doubles per stage."""
        return self.base_width * (self.planes[stage_index] // self.planes[0]) * self.cardinality


SPECS: dict[str, ResNeXtSpec] = {
    "resnext50_32x4d": ResNeXtSpec((3, 4, 6, 3), cardinality=32, base_width=4),
    "resnext101_32x8d": ResNeXtSpec((3, 4, 23, 3), cardinality=32, base_width=8),
    # CPU demo: two bottlenecks per stage, a quarter of the planes and of the groups (8 × 4d).
    "resnext26_x0_25": ResNeXtSpec((2, 2, 2, 2), cardinality=8, base_width=4, planes=(16, 32, 64, 128)),
}


class GroupedBottleneck(nn.Module):
    """1×1 reduce → grouped 3×3 (stride here) → 1×1 expand, + identity (1×1/s + norm if needed), ReLU."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        groups: int,
        stride: int,
        norm: str,
        first_norm: str,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = make_norm(first_norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = make_norm(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                make_norm(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeXt(Backbone):
    """ResNeXt backbone; ``ibn_a`` puts the IBN-a split norm first in every bottleneck of stages 1-3."""

    def __init__(
        self, spec: ResNeXtSpec, norm: str = "bn", last_stride: int = 1, ibn_a: bool = False
    ) -> None:
        super().__init__()
        stem = spec.planes[0]
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = stem
        strides = (1, 2, 2, last_stride)
        for index, (blocks, planes, stride) in enumerate(zip(spec.depths, spec.planes, strides)):
            first_norm = "ibn" if ibn_a and index < 3 else norm
            out_channels = planes * _EXPANSION
            layers = []
            for block_index in range(blocks):
                layers.append(
                    GroupedBottleneck(
                        in_channels,
                        spec.width(index),
                        out_channels,
                        spec.cardinality,
                        stride if block_index == 0 else 1,
                        norm,
                        first_norm,
                    )
                )
                in_channels = out_channels
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.stage_channels = tuple(p * _EXPANSION for p in spec.planes)
        self.out_channels = self.stage_channels[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage_modules(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def remap_pretrained_key(self, key: str) -> str:
        """IBN-Net's split-norm children ``IN``/``BN`` → ``inorm``/``bn`` (torchvision/timm: unchanged)."""
        key = re.sub(r"\.IN\.", ".inorm.", key)
        return re.sub(r"\.BN\.", ".bn.", key)


def _register(name: str, spec: ResNeXtSpec, ibn_a: bool) -> None:
    @register_backbone(name)
    def build(norm: str = "bn", last_stride: int = 1) -> ResNeXt:
        return ResNeXt(spec, norm=norm, last_stride=last_stride, ibn_a=ibn_a)

    depth = sum(spec.depths) * 3 + 2
    build.__doc__ = f"{name}: ResNeXt-{depth} {spec.cardinality}x{spec.base_width}d" + (
        " IBN-a" if ibn_a else ""
    )


_IBN_A_NAMES = {
    "resnext50_32x4d": "resnext50_ibn_a",
    "resnext101_32x8d": "resnext101_ibn_a",
    "resnext26_x0_25": "resnext26_ibn_a_x0_25",
}

for _name, _spec in SPECS.items():
    _register(_name, _spec, ibn_a=False)
    _register(_IBN_A_NAMES[_name], _spec, ibn_a=True)
