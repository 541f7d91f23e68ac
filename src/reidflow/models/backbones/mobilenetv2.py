"""MobileNetV2 (Sandler et al. 2018) at width multipliers 0.5, 1.0 and 1.4.

Channel widths are rounded to multiples of 8 exactly as torchvision does (so torchvision's x1.0
checkpoint has the same shapes); the final 1×1 conv has ``1280 * max(1, width)`` channels. There is
no classifier: the backbone ends at that 1×1 conv, which is how the published parameter counts
(x1.0 2.2M, x1.4 4.3M) are counted. The seven bottleneck groups are split into four stages at the
resolution changes: stage1 = stem + groups 16/24 (/4), stage2 = group 32 (/8), stage3 = groups
64/96 (/16), stage4 = groups 160/320 + final 1×1 conv (/32, or /16 with ``last_stride=1``: the
stride of the 160 group). Activations are ReLU6.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from reidflow.models.backbones.base import Backbone
from reidflow.models.norms import make_norm
from reidflow.models.registry import register_backbone

# (expansion t, channels c, repeats n, stride s) per bottleneck group, from the paper's Table 2.
_GROUPS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_GROUPS_PER_STAGE = ((0, 1), (2,), (3, 4), (5, 6))
_LAST_STRIDE_GROUP = 5


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` without going below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormAct(nn.Sequential):
    """conv → norm (→ ReLU6 when ``act``); children ``conv``, ``bn`` (the norm slot), ``act``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        norm: str,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False
        )
        self.bn = make_norm(norm, out_channels)
        if act:
            self.act = nn.ReLU6(inplace=True)


class InvertedResidual(nn.Module):
    """1×1 expand (skipped when t = 1) → depthwise 3×3 → linear 1×1 project, + identity if shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int, norm: str) -> None:
        super().__init__()
        hidden = round(in_channels * expansion)
        self.expand = ConvNormAct(in_channels, hidden, 1, 1, norm) if expansion != 1 else None
        self.depthwise = ConvNormAct(hidden, hidden, 3, stride, norm, groups=hidden)
        self.project = ConvNormAct(hidden, out_channels, 1, 1, norm, act=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return x + out if self.use_residual else out


class MobileNetV2(Backbone):
    def __init__(self, width: float = 1.0, norm: str = "bn", last_stride: int = 2) -> None:
        super().__init__()
        in_channels = make_divisible(32 * width)
        self.stem = ConvNormAct(3, in_channels, 3, 2, norm)
        self._torchvision_layout: list[tuple[str, bool]] = [("stem", False)]  # (path, is_block_with_expand)
        stage_channels = []
        for stage_index, group_ids in enumerate(_GROUPS_PER_STAGE):
            blocks: list[nn.Module] = []
            for group in group_ids:
                expansion, channels, repeats, stride = _GROUPS[group]
                if group == _LAST_STRIDE_GROUP:
                    stride = last_stride
                out_channels = make_divisible(channels * width)
                for repeat in range(repeats):
                    path = f"stage{stage_index + 1}.{len(blocks)}"
                    self._torchvision_layout.append((path, expansion != 1))
                    blocks.append(
                        InvertedResidual(
                            in_channels, out_channels, stride if repeat == 0 else 1, expansion, norm
                        )
                    )
                    in_channels = out_channels
            if stage_index == len(_GROUPS_PER_STAGE) - 1:
                last_channels = make_divisible(1280 * max(1.0, width))
                self._torchvision_layout.append((f"stage4.{len(blocks)}", False))
                blocks.append(ConvNormAct(in_channels, last_channels, 1, 1, norm))
                in_channels = last_channels
            setattr(self, f"stage{stage_index + 1}", nn.Sequential(*blocks))
            stage_channels.append(in_channels)
        self.stage_channels = tuple(stage_channels)
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def stage_modules(self) -> list[nn.Module]:
        return [self.stage1, self.stage2, self.stage3, self.stage4]

    def remap_pretrained_key(self, key: str) -> str:
        """torchvision ``features.<i>.<...>`` → ours (``features.0`` stem … ``features.18`` last 1×1)."""
        match = re.match(r"^features\.(\d+)\.(.+)$", key)
        if not match or int(match.group(1)) >= len(self._torchvision_layout):
            return key
        path, has_expand = self._torchvision_layout[int(match.group(1))]
        rest = match.group(2)
        if path == "stem" or not rest.startswith("conv."):
            rest = re.sub(r"^0\.", "conv.", rest)
            rest = re.sub(r"^1\.", "bn.", rest)
            return f"{path}.{rest}"
        if has_expand:
            table = {
                "conv.0.0.": "expand.conv.",
                "conv.0.1.": "expand.bn.",
                "conv.1.0.": "depthwise.conv.",
                "conv.1.1.": "depthwise.bn.",
                "conv.2.": "project.conv.",
                "conv.3.": "project.bn.",
            }
        else:
            table = {
                "conv.0.0.": "depthwise.conv.",
                "conv.0.1.": "depthwise.bn.",
                "conv.1.": "project.conv.",
                "conv.2.": "project.bn.",
            }
        for public, ours in table.items():
            if rest.startswith(public):
                return f"{path}.{ours}{rest[len(public) :]}"
        return key


def _register(name: str, width: float) -> None:
    @register_backbone(name)
    def build(norm: str = "bn", last_stride: int = 1) -> MobileNetV2:
        return MobileNetV2(width, norm=norm, last_stride=last_stride)

    build.__doc__ = f"{name}: MobileNetV2 width ×{width}"


_register("mobilenetv2_x0_5", 0.5)
_register("mobilenetv2_x1_0", 1.0)
_register("mobilenetv2_x1_4", 1.4)
