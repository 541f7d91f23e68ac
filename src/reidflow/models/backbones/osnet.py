"""OSNet (Zhou et al. 2019) and OSNet-AIN (Zhou et al. 2021), widths ×1.0 / ×0.75 / ×0.5 / ×0.25.

Layout (names follow the paper's table and the public checkpoints):
``conv1`` 7×7/2 conv + norm + ReLU, ``maxpool`` 3×3/2; ``conv2`` and ``conv3``: 2 OS blocks each +
a transition (1×1 conv + 2×2 avg-pool); ``conv4``: 2 OS blocks; ``conv5``: 1×1 conv + norm + ReLU.

OS block: 1×1 to C/4 → ``streams`` t = 1..4 of t Lite 3×3 layers (1×1 linear conv + depthwise 3×3 +
norm + ReLU) → one ``gate`` shared by the streams (GAP → C/64 → ReLU → C/4 → sigmoid, i.e. reduction
16 of the C/4 width) applied to each stream, summed → 1×1 conv + norm (``conv3``) → + identity (1×1 +
norm projection when widths differ) → ReLU.

OSNet-AIN (``osnet_ain_x1_0``): ``conv1`` uses instance norm, and the blocks conv2.0, conv2.1, conv3.1
and conv4.0 normalize their residual branch with affine IN (``residual_norm``, in place of
``conv3``'s norm) before adding the identity; the other blocks are plain OS blocks (the block
pattern of the public OSNet-AIN code).

Stages for ``forward_stages``: stage1 = stem + conv2 (/8), stage2 = conv3 (/16), stage3 = conv4 (/16),
stage4 = conv5. OSNet's last OS stage does not downsample, which is what ``last_stride=1`` means here;
``last_stride=2`` appends a parameter-free 2×2 avg-pool to conv4 (like the transitions).

The backbone ends at conv5 (no GAP, no FC). The published parameter counts (x1.0 2.2M, x0.25 0.2M)
include the 512-d FC embedding (Linear + BN1d) that follows GAP in the public model, and exclude the
identity classifier: use ``ReIDModel(..., embedding_dim=512)`` for that FC.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from reidflow.models.backbones.base import Backbone
from reidflow.models.norms import make_norm
from reidflow.models.registry import register_backbone

_WIDTHS = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}
_GATE_REDUCTION = 16
_BOTTLENECK_REDUCTION = 4
_NUM_STREAMS = 4
# Which blocks of OSNet-AIN normalize their residual branch with IN, per stage (conv2, conv3, conv4).
_AIN_RESIDUAL_IN = ((True, True), (False, True), (True, False))


class ConvLayer(nn.Module):
    """conv → norm (optional) → ReLU (optional); children ``conv``, ``bn`` (the norm slot), ``relu``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        norm: str | None = "bn",
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, bias=False)
        self.bn = make_norm(norm, out_channels) if norm else None
        self.relu = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x) if self.relu is not None else x


class LiteConv3x3(nn.Module):
    """Lite 3×3: linear 1×1 conv → depthwise 3×3 conv → norm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False)
        self.bn = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Unified aggregation gate: GAP → 1×1 (C/16) → ReLU → 1×1 (C) → sigmoid, times the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // _GATE_REDUCTION)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = x.mean(dim=(2, 3), keepdim=True)
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(weights))))
        return x * weights


class OSBlock(nn.Module):
    """Omni-scale residual block; ``residual_norm`` (e.g. ``"in"``) normalizes the residual branch."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str, residual_norm: str | None = None
    ) -> None:
        super().__init__()
        mid = out_channels // _BOTTLENECK_REDUCTION
        self.conv1 = ConvLayer(in_channels, mid, norm=norm)
        self.streams = nn.ModuleList(
            nn.Sequential(*[LiteConv3x3(mid, mid, norm) for _ in range(depth)])
            for depth in range(1, _NUM_STREAMS + 1)
        )
        self.gate = ChannelGate(mid)
        self.conv3 = ConvLayer(mid, out_channels, norm=None if residual_norm else norm, act=False)
        self.residual_norm = make_norm(residual_norm, out_channels) if residual_norm else None
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = ConvLayer(in_channels, out_channels, norm=norm, act=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        fused = sum(self.gate(stream(reduced)) for stream in self.streams)
        out = self.conv3(fused)
        if self.residual_norm is not None:
            out = self.residual_norm(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class OSNet(Backbone):
    def __init__(
        self, width: str = "x1_0", norm: str = "bn", last_stride: int = 1, ain: bool = False
    ) -> None:
        super().__init__()
        channels = _WIDTHS[width]
        self.conv1 = ConvLayer(3, channels[0], 7, stride=2, norm="in" if ain else norm)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        residual_in = _AIN_RESIDUAL_IN if ain else ((False, False),) * 3
        for index in range(3):
            in_ch, out_ch = channels[index], channels[index + 1]
            first, second = residual_in[index]
            layers: list[nn.Module] = [
                OSBlock(in_ch, out_ch, norm, "in" if first else None),
                OSBlock(out_ch, out_ch, norm, "in" if second else None),
            ]
            if index < 2:
                layers.append(nn.Sequential(ConvLayer(out_ch, out_ch, norm=norm), nn.AvgPool2d(2, stride=2)))
            elif last_stride == 2:
                layers.append(nn.AvgPool2d(2, stride=2))
            setattr(self, f"conv{index + 2}", nn.Sequential(*layers))
        self.conv5 = ConvLayer(channels[3], channels[3], norm=norm)
        self.stage_channels = (channels[1], channels[2], channels[3], channels[3])
        self.out_channels = channels[3]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.conv1(x))

    def stage_modules(self) -> list[nn.Module]:
        return [self.conv2, self.conv3, self.conv4, self.conv5]

    def remap_pretrained_key(self, key: str) -> str:
        """Public ``osnet.py`` (conv2a..conv2d) and ``osnet_ain.py`` (conv2.<t>.layers, IN, pool2/3) → ours.

        ``osnet.py`` keeps the transitions inside the stage (``conv2.2``, as we do); ``osnet_ain.py``
        names them ``pool2``/``pool3``.
        """
        key = re.sub(r"^(conv\d\.\d+)\.conv2a\.", r"\1.streams.0.0.", key)
        key = re.sub(r"^(conv\d\.\d+)\.conv2b\.", r"\1.streams.1.", key)
        key = re.sub(r"^(conv\d\.\d+)\.conv2c\.", r"\1.streams.2.", key)
        key = re.sub(r"^(conv\d\.\d+)\.conv2d\.", r"\1.streams.3.", key)
        key = re.sub(r"^(conv\d\.\d+)\.conv2\.(\d+)\.layers\.", r"\1.streams.\2.", key)
        key = re.sub(r"^pool([23])\.", r"conv\1.2.", key)
        return re.sub(r"^(conv\d\.\d+)\.IN\.", r"\1.residual_norm.", key)


def _register(name: str, width: str, ain: bool) -> None:
    @register_backbone(name)
    def build(norm: str = "bn", last_stride: int = 1) -> OSNet:
        return OSNet(width, norm=norm, last_stride=last_stride, ain=ain)

    build.__doc__ = f"{name}: OSNet{'-AIN' if ain else ''} width {width}"


for _width in _WIDTHS:
    _register(f"osnet_{_width}", _width, ain=False)
_register("osnet_ain_x1_0", "x1_0", ain=True)
