"""ResNeSt (Zhang et al. 2020): a ResNet-D whose bottleneck 3×3 conv is a split-attention conv.

Published "ResNeSt-50" design (2s1x64d): radix 2, cardinality 1, bottleneck width 64, deep stem
(three 3×3 convs, 32-32-64 channels for -50, 64-64-128 for -101), average-pool downsampling in both
paths of a strided bottleneck (a 3×3/s avg-pool after the split-attention conv, "avd"; a 2×2 avg-pool
before the 1×1 projection of the shortcut, "avg_down").

Module names are those of the official code (and of timm, which uses the same names), so their
checkpoints load without renaming: ``conv1.{0,3,6}`` / ``conv1.{1,4}`` (deep stem convs / norms),
``bn1``, ``layerN.i.{conv1,bn1,conv3,bn3}``, the split-attention conv ``layerN.i.conv2.{conv,bn0,fc1,
bn1,fc2}`` (its radix softmax has no parameters) and ``layerN.0.downsample.{1,2}`` (index 0 is the
parameter-free pool).

Split attention (radix R, cardinality 1): a grouped 3×3 conv gives R feature maps; their sum is
average-pooled to a C-vector, fc1 → norm → ReLU → fc2 gives R logits per channel, a softmax over R
gives the weights of the R maps, whose weighted sum is the output.

Norms: every norm over a feature map comes from :func:`make_norm`. The norm inside the attention
(``conv2.bn1``) normalizes the pooled C-vector, where instance statistics do not exist; it is a
BatchNorm1d (same keys and shapes as the official BatchNorm2d), like the BNNeck: ``convert_norms``
leaves it alone and ``convert_to_dsbn`` pairs it.

``last_stride=1`` makes stage 4 stride 1 without any pooling (the official code would keep a 3×3
stride-1 average pool there); published counts (-50 27.5M, -101 48.3M) include the 1000-way FC,
which this backbone does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reidflow.models.backbones.base import Backbone
from reidflow.models.norms import make_norm
from reidflow.models.registry import register_backbone

_EXPANSION = 4
_ATTENTION_REDUCTION = 4
_ATTENTION_MIN_CHANNELS = 32


@dataclass(frozen=True)
class ResNeStSpec:
    """Depths per stage, stem width, bottleneck planes per stage, and the split-attention shape."""

    depths: tuple[int, int, int, int]
    stem_width: int
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    radix: int = 2
    cardinality: int = 1
    bottleneck_width: int = 64


SPECS: dict[str, ResNeStSpec] = {
    "resnest50": ResNeStSpec((3, 4, 6, 3), stem_width=32),
    "resnest101": ResNeStSpec((3, 4, 23, 3), stem_width=64),
    # CPU demo: ResNeSt-26 depth (two bottlenecks per stage), a quarter of the stem and planes.
    "resnest26_x0_25": ResNeStSpec((2, 2, 2, 2), stem_width=8, planes=(16, 32, 64, 128)),
}


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)


class SplitAttentionConv(nn.Module):
    """Split-attention 3×3 conv (children ``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``, official names)."""

    def __init__(self, channels: int, radix: int, cardinality: int, norm: str) -> None:
        super().__init__()
        self.channels = channels
        self.radix = radix
        self.cardinality = cardinality
        hidden = max(channels * radix // _ATTENTION_REDUCTION, _ATTENTION_MIN_CHANNELS)
        self.conv = _conv(channels, channels * radix, 3, groups=cardinality * radix)
        self.bn0 = make_norm(norm, channels * radix)
        self.fc1 = nn.Conv2d(channels, hidden, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels * radix, 1, groups=cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.conv(x)))
        splits = torch.split(x, self.channels, dim=1)
        pooled = sum(splits).mean(dim=(2, 3), keepdim=True)
        hidden = F.relu(self.bn1(self.fc1(pooled).flatten(1)))
        logits = self.fc2(hidden[:, :, None, None])
        weights = torch.split(self._radix_softmax(logits), self.channels, dim=1)
        return sum(w * s for w, s in zip(weights, splits))

    def _radix_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the radix splits of each channel (sigmoid when radix is 1), official channel order."""
        if self.radix == 1:
            return torch.sigmoid(logits)
        n = logits.size(0)
        grouped = logits.view(n, self.cardinality, self.radix, -1).transpose(1, 2)
        return F.softmax(grouped, dim=1).reshape(n, -1, 1, 1)


class SplitBottleneck(nn.Module):
    """1×1 → split-attention 3×3 → [3×3/s avg-pool] → 1×1, + shortcut ([avg-pool] → 1×1 → norm), ReLU."""

    def __init__(self, in_channels: int, planes: int, stride: int, spec: ResNeStSpec, norm: str) -> None:
        super().__init__()
        width = int(planes * spec.bottleneck_width / 64) * spec.cardinality
        out_channels = planes * _EXPANSION
        self.conv1 = _conv(in_channels, width, 1)
        self.bn1 = make_norm(norm, width)
        self.conv2 = SplitAttentionConv(width, spec.radix, spec.cardinality, norm)
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else None
        self.conv3 = _conv(width, out_channels, 1)
        self.bn3 = make_norm(norm, out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            pool: nn.Module = nn.Identity()
            if stride > 1:
                pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            self.downsample = nn.Sequential(
                pool, _conv(in_channels, out_channels, 1), make_norm(norm, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.bn1(self.conv1(x))))
        if self.avd_layer is not None:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNeSt(Backbone):
    """ResNeSt backbone ending at ``layer4`` (``4 × planes[3]`` channels, 2048 for -50/-101)."""

    def __init__(self, spec: ResNeStSpec, norm: str = "bn", last_stride: int = 1) -> None:
        super().__init__()
        stem = spec.stem_width
        self.conv1 = nn.Sequential(
            _conv(3, stem, 3, stride=2),
            make_norm(norm, stem),
            nn.ReLU(inplace=True),
            _conv(stem, stem, 3),
            make_norm(norm, stem),
            nn.ReLU(inplace=True),
            _conv(stem, 2 * stem, 3),
        )
        self.bn1 = make_norm(norm, 2 * stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 2 * stem
        strides = (1, 2, 2, last_stride)
        for index, (blocks, planes, stride) in enumerate(zip(spec.depths, spec.planes, strides)):
            layers = []
            for block_index in range(blocks):
                layers.append(
                    SplitBottleneck(in_channels, planes, stride if block_index == 0 else 1, spec, norm)
                )
                in_channels = planes * _EXPANSION
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.stage_channels = tuple(p * _EXPANSION for p in spec.planes)
        self.out_channels = self.stage_channels[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage_modules(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]


def _register(name: str, spec: ResNeStSpec) -> None:
    @register_backbone(name)
    def build(norm: str = "bn", last_stride: int = 1) -> ResNeSt:
        return ResNeSt(spec, norm=norm, last_stride=last_stride)

    build.__doc__ = f"{name}: ResNeSt {sum(spec.depths) * 3 + 2} layers, radix {spec.radix}"


for _name, _spec in SPECS.items():
    _register(_name, _spec)
