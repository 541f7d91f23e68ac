"""DenseNet-BC (Huang et al. 2017) 121 / 169, plain and IBN-a (Pan et al. 2018).

Dense layer (pre-activation): norm → ReLU → 1×1 conv (4k) → norm → ReLU → 3×3 conv (k new channels),
concatenated to its input; growth rate k = 32. A transition halves the channels (norm → ReLU → 1×1)
and average-pools 2×2. Stem: 7×7/2 conv, norm, ReLU, 3×3/2 max-pool.

Stages (what :meth:`forward_stages` returns): stage1 = dense block 1 (/4), stage2 = transition 1 +
block 2 (/8), stage3 = transition 2 + block 3 (/16), stage4 = transition 3 + block 4 + final norm +
ReLU (/32; /16 with ``last_stride=1``, which drops the pool of transition 3). DenseNet-121 stage
channels: 256, 512, 1024, 1024 (169: 256, 512, 1280, 1664).

Module names inside a block are torchvision's (``denseblockB.denselayerL.{norm1,conv1,norm2,conv2}``,
``transitionB.{norm,conv}``, ``norm0``, ``conv0``, ``norm5``), grouped under ``stage1..4``;
:meth:`DenseNet.remap_pretrained_key` maps torchvision's ``features.*`` keys (and its legacy
``norm.1``/``conv.2`` spelling) and IBN-Net's ``IN``/``BN`` children onto them.

IBN-a, as the public IBN-Net DenseNet places it: the first norm of dense layers 1, 4, 7, ... of
blocks 1-3 is a split norm with BN on the first 60% of the channels (``int(0.6 C)``) and affine IN
on the remaining 40% (:class:`DenseIBN`). This is not the factory's ``ibn`` (IN first, half/half),
so the public checkpoints keep their channel order. Every other norm is ``make_norm(norm, C)``.

The published counts (121: 8.0M, 169: 14.1M) include the 1000-way classifier, which is not here.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reidflow.errors import ConfigError
from reidflow.models.backbones.base import Backbone
from reidflow.models.norms import make_norm
from reidflow.models.registry import register_backbone

_IBN_BN_RATIO = 0.6
_IBN_EVERY = 3
_IBN_BLOCKS = 3


@dataclass(frozen=True)
class DenseNetSpec:
    """Dense layers per block, growth rate, stem width, bottleneck factor (1×1 conv = bn_size × k)."""

    blocks: tuple[int, int, int, int]
    growth_rate: int = 32
    init_features: int = 64
    bn_size: int = 4


SPECS: dict[str, DenseNetSpec] = {
    "densenet121": DenseNetSpec((6, 12, 24, 16)),
    "densenet169": DenseNetSpec((6, 12, 32, 32)),
    # CPU demo: half the dense layers per block, half the growth rate and stem width.
    "densenet63_x0_5": DenseNetSpec((3, 6, 12, 8), growth_rate=16, init_features=32),
}


class DenseIBN(nn.Module):
    """IBN-Net's DenseNet split norm: BN on the first ``int(0.6 C)`` channels, affine IN on the rest."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.bn_channels = int(num_features * _IBN_BN_RATIO)
        if not 0 < self.bn_channels < num_features:
            raise ConfigError(f"DenseNet IBN-a: {num_features} channels cannot be split 60/40")
        self.bn = make_norm("bn", self.bn_channels)
        self.inorm = make_norm("in", num_features - self.bn_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_bn, x_in = torch.split(x, [self.bn_channels, self.num_features - self.bn_channels], dim=1)
        return torch.cat([self.bn(x_bn.contiguous()), self.inorm(x_in.contiguous())], dim=1)

    def load_from_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        """BN part: statistics and affine of its channels; IN part: affine of its channels."""
        if bn.num_features != self.num_features:
            raise ConfigError(
                f"cannot initialize a {self.num_features}-channel norm from a {bn.num_features}-channel BN"
            )
        head, tail = slice(0, self.bn_channels), slice(self.bn_channels, self.num_features)
        with torch.no_grad():
            self.bn.running_mean.copy_(bn.running_mean[head])
            self.bn.running_var.copy_(bn.running_var[head])
            self.bn.num_batches_tracked.copy_(bn.num_batches_tracked)
            for dst, channels in ((self.bn, head), (self.inorm, tail)):
                dst.weight.copy_(bn.weight[channels])
                dst.bias.copy_(bn.bias[channels])


class DenseLayer(nn.Module):
    """norm1 → ReLU → conv1 (1×1) → norm2 → ReLU → conv2 (3×3, ``growth`` channels)."""

    def __init__(self, in_channels: int, spec: DenseNetSpec, norm: str, ibn: bool) -> None:
        super().__init__()
        hidden = spec.bn_size * spec.growth_rate
        self.norm1 = DenseIBN(in_channels) if ibn else make_norm(norm, in_channels)
        self.conv1 = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.norm2 = make_norm(norm, hidden)
        self.conv2 = nn.Conv2d(hidden, spec.growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(out)))


class DenseBlock(nn.ModuleDict):
    """``denselayer1..L``; each layer sees the concatenation of the block input and all earlier outputs."""

    def __init__(self, num_layers: int, in_channels: int, spec: DenseNetSpec, norm: str, ibn: bool) -> None:
        super().__init__()
        for index in range(num_layers):
            layer_ibn = ibn and index % _IBN_EVERY == 0
            self[f"denselayer{index + 1}"] = DenseLayer(
                in_channels + index * spec.growth_rate, spec, norm, layer_ibn
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Module):
    """norm → ReLU → 1×1 conv (halves the channels) → 2×2 avg-pool (none when ``stride`` is 1)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, stride: int = 2) -> None:
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


class DenseNet(Backbone):
    """DenseNet-BC backbone ending at the final norm + ReLU; ``ibn_a`` as in IBN-Net's DenseNet."""

    def __init__(
        self, spec: DenseNetSpec, norm: str = "bn", last_stride: int = 1, ibn_a: bool = False
    ) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, spec.init_features, 7, stride=2, padding=3, bias=False)
        self.norm0 = make_norm(norm, spec.init_features)
        self.pool0 = nn.MaxPool2d(3, stride=2, padding=1)
        channels = spec.init_features
        stage_channels = []
        for index, num_layers in enumerate(spec.blocks):
            parts: OrderedDict[str, nn.Module] = OrderedDict()
            if index > 0:
                stride = last_stride if index == 3 else 2
                parts[f"transition{index}"] = Transition(channels, channels // 2, norm, stride)
                channels //= 2
            block_ibn = ibn_a and index < _IBN_BLOCKS
            parts[f"denseblock{index + 1}"] = DenseBlock(num_layers, channels, spec, norm, block_ibn)
            channels += num_layers * spec.growth_rate
            if index == 3:
                parts["norm5"] = make_norm(norm, channels)
                parts["relu5"] = nn.ReLU(inplace=True)
            setattr(self, f"stage{index + 1}", nn.Sequential(parts))
            stage_channels.append(channels)
        self.stage_channels = tuple(stage_channels)
        self.out_channels = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool0(F.relu(self.norm0(self.conv0(x))))

    def stage_modules(self) -> list[nn.Module]:
        return [self.stage1, self.stage2, self.stage3, self.stage4]

    def remap_pretrained_key(self, key: str) -> str:
        """torchvision ``features.*`` (also legacy ``norm.1``) and IBN-Net ``IN``/``BN`` → ours."""
        key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", key)
        key = re.sub(r"\.IN\.", ".inorm.", key)
        key = re.sub(r"\.BN\.", ".bn.", key)
        match = re.match(r"^features\.(conv0|norm0|norm5|denseblock(\d)|transition(\d))\.(.+)$", key)
        if not match:
            return key
        name, block, transition, rest = match.groups()
        if block:
            return f"stage{block}.{name}.{rest}"
        if transition:
            return f"stage{int(transition) + 1}.{name}.{rest}"
        return f"stage4.norm5.{rest}" if name == "norm5" else f"{name}.{rest}"


def _register(name: str, spec: DenseNetSpec, ibn_a: bool) -> None:
    @register_backbone(name)
    def build(norm: str = "bn", last_stride: int = 1) -> DenseNet:
        return DenseNet(spec, norm=norm, last_stride=last_stride, ibn_a=ibn_a)

    build.__doc__ = f"{name}: DenseNet-BC blocks {spec.blocks}, k={spec.growth_rate}" + (
        " IBN-a" if ibn_a else ""
    )


_IBN_A_NAMES = {
    "densenet121": "densenet121_ibn_a",
    "densenet169": "densenet169_ibn_a",
    "densenet63_x0_5": "densenet63_ibn_a_x0_5",
}

for _name, _spec in SPECS.items():
    _register(_name, _spec, ibn_a=False)
    _register(_IBN_A_NAMES[_name], _spec, ibn_a=True)
