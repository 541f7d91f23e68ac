"""ResNet-50/101 and their IBN-a / IBN-b variants (bottleneck v1.5).

v1.5 = the stride of a downsampling bottleneck sits on its 3×3 conv (as in torchvision and in the
public IBN-Net code), not on the first 1×1 as in the original v1 paper. Module names follow
torchvision (``conv1, bn1, layer1.0.conv1, ..., layer4.2.bn3, layerN.0.downsample.{0,1}``) so
torchvision checkpoints load without renaming; the IBN-b norm after a residual sum is called
``post_sum_norm`` (IBN-Net calls it ``IN``) and IBN-a's split norm has children ``inorm``/``bn``
(IBN-Net: ``IN``/``BN``); :meth:`ResNet.remap_pretrained_key` renames those.

* IBN-a: the first norm of every bottleneck of stages 1-3 is ``ibn`` (half IN, half BN).
* IBN-b: the stem norm is ``in`` and the last bottleneck of stages 1 and 2 applies ``in`` after the
  residual sum (before the ReLU).

There is no final FC: the backbone ends at ``layer4`` (2048 channels). ``last_stride`` is the stride
of stage 4 (1 keeps a 16×8 map at 256×128 input, the re-ID default).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from reidflow.models.backbones.base import Backbone
from reidflow.models.norms import make_norm
from reidflow.models.registry import register_backbone

_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_STAGE_WIDTHS = (64, 128, 256, 512)
_EXPANSION = 4


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (stride here, v1.5) → 1×1 expand, + identity, ReLU."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        norm: str,
        first_norm: str,
        post_sum_norm: str | None,
    ) -> None:
        super().__init__()
        out_channels = width * _EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = make_norm(first_norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
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
        self.post_sum_norm = make_norm(post_sum_norm, out_channels) if post_sum_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        if self.post_sum_norm is not None:
            out = self.post_sum_norm(out)
        return self.relu(out)


class ResNet(Backbone):
    """ResNet backbone; ``ibn`` is None, ``"a"`` or ``"b"``."""

    def __init__(self, depth: int, norm: str = "bn", last_stride: int = 1, ibn: str | None = None) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm("in" if ibn == "b" else norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        strides = (1, 2, 2, last_stride)
        for index, (blocks, width, stride) in enumerate(zip(_DEPTHS[depth], _STAGE_WIDTHS, strides)):
            stage_number = index + 1
            first_norm = "ibn" if ibn == "a" and stage_number <= 3 else norm
            layers = []
            for block_index in range(blocks):
                is_last = block_index == blocks - 1
                post_sum = "in" if ibn == "b" and stage_number <= 2 and is_last else None
                layers.append(
                    Bottleneck(
                        in_channels, width, stride if block_index == 0 else 1, norm, first_norm, post_sum
                    )
                )
                in_channels = width * _EXPANSION
            setattr(self, f"layer{stage_number}", nn.Sequential(*layers))
        self.stage_channels = tuple(w * _EXPANSION for w in _STAGE_WIDTHS)
        self.out_channels = self.stage_channels[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming for convs; norm layers keep their own constructor init."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage_modules(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def remap_pretrained_key(self, key: str) -> str:
        """IBN-Net naming → ours (torchvision keys need no change)."""
        key = re.sub(r"^(layer\d+\.\d+)\.IN\.", r"\1.post_sum_norm.", key)
        key = re.sub(r"\.IN\.", ".inorm.", key)
        return re.sub(r"\.BN\.", ".bn.", key)


def _register(name: str, depth: int, ibn: str | None) -> None:
    @register_backbone(name)
    def build(norm: str = "bn", last_stride: int = 1) -> ResNet:
        return ResNet(depth, norm=norm, last_stride=last_stride, ibn=ibn)

    build.__doc__ = f"{name}: ResNet-{depth}" + (f" with IBN-{ibn}" if ibn else "")


for _depth in (50, 101):
    _register(f"resnet{_depth}", _depth, None)
    _register(f"resnet{_depth}_ibn_a", _depth, "a")
    _register(f"resnet{_depth}_ibn_b", _depth, "b")
