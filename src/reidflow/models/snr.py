"""Style normalization and restitution (SNR, Jin et al. CVPR 2020).

An :class:`SNRModule` after a backbone stage removes instance style with IN (``F̃ = IN(F)``), then
gives back the part of the removed residual ``R = F - F̃`` that a channel attention ``a`` judges
identity-relevant: the network continues with ``F̃⁺ = F̃ + a⊙R``. The complement
``F̃⁻ = F̃ + (1-a)⊙R`` exists only for the dual causality loss (:mod:`reidflow.losses.snr`).

:func:`build_snr_modules` places one module after each requested stage (1-3) of a backbone;
:class:`~reidflow.models.reid_model.ReIDModel` runs them between the stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reidflow.errors import ConfigError
from reidflow.models.norms import InstanceNorm2d

SNR_ALLOWED_STAGES = (1, 2, 3)


class SNROutput(NamedTuple):
    """The three maps of one SNR module (all N×C×H×W)."""

    restituted: torch.Tensor  # F̃⁺ = F̃ + R⁺: what the network continues with
    normalized: torch.Tensor  # F̃ = IN(F)
    contaminated: torch.Tensor  # F̃⁻ = F̃ + R⁻: for the dual causality loss only


class SNRModule(nn.Module):
    """IN, residual, channel attention ``a = σ(W2 ReLU(W1 GAP(R)))`` and the split ``R⁺ = a⊙R, R⁻ = (1-a)⊙R``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if int(channels) <= 0:
            raise ConfigError(f"SNRModule: channels must be > 0, got {channels}")
        if int(reduction) <= 0:
            raise ConfigError(f"model.snr_reduction must be > 0, got {reduction}")
        hidden = max(int(channels) // int(reduction), 1)
        self.channels = int(channels)
        self.instance_norm = InstanceNorm2d(self.channels)
        self.fc1 = nn.Linear(self.channels, hidden)
        self.fc2 = nn.Linear(hidden, self.channels)

    def attention(self, residual: torch.Tensor) -> torch.Tensor:
        """Per-sample channel weights in (0, 1), shaped N×C×1×1."""
        pooled = residual.mean(dim=(2, 3))
        return torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> SNROutput:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ConfigError(
                f"SNRModule: expected an N×{self.channels}×H×W feature map, got {tuple(x.shape)}"
            )
        if x.shape[2] * x.shape[3] < 2:
            raise ConfigError(
                f"SNRModule: instance norm needs a feature map larger than 1×1, got {tuple(x.shape)}; "
                "use a larger input size or insert SNR after an earlier stage"
            )
        normalized = self.instance_norm(x)
        residual = x - normalized
        weights = self.attention(residual)
        return SNROutput(
            restituted=normalized + weights * residual,
            normalized=normalized,
            contaminated=normalized + (1.0 - weights) * residual,
        )


def check_snr_stages(stages: Sequence[int]) -> tuple[int, ...]:
    """Return ``stages`` as a tuple, or raise a ConfigError naming ``model.snr_stages``."""
    problem = snr_stages_problem(stages)
    if problem is not None:
        raise ConfigError(f"model.snr_stages: {problem}, got {stages!r}")
    return tuple(int(s) for s in stages)


def snr_stages_problem(stages: Sequence[int]) -> str | None:
    """What is wrong with ``stages`` (None when valid): a sorted list of distinct stages from 1-3."""
    allowed = ", ".join(str(s) for s in SNR_ALLOWED_STAGES)
    expected = f"expected a sorted list of distinct stage numbers from {{{allowed}}} (empty = no SNR)"
    if isinstance(stages, str | bytes) or not isinstance(stages, Sequence):
        return expected
    values = list(stages)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in values):
        return expected
    if any(s not in SNR_ALLOWED_STAGES for s in values):
        return f"{expected}; SNR goes after stages 1-3 only"
    if values != sorted(set(values)):
        return expected
    return None


def build_snr_modules(backbone: nn.Module, stages: Sequence[int], reduction: int = 16) -> nn.ModuleDict:
    """One :class:`SNRModule` per stage in ``stages``, keyed ``"stage<s>"``, sized from ``stage_channels``."""
    checked = check_snr_stages(stages)
    if int(reduction) <= 0:
        raise ConfigError(f"model.snr_reduction must be > 0, got {reduction}")
    if checked and not all(
        hasattr(backbone, attr) for attr in ("stage_channels", "forward_stem", "stage_modules")
    ):
        raise ConfigError(
            f"model.snr_stages: backbone {type(backbone).__name__} does not expose stage_channels, "
            "forward_stem and stage_modules, so SNR cannot be inserted between its stages"
        )
    return nn.ModuleDict(
        {f"stage{s}": SNRModule(int(backbone.stage_channels[s - 1]), reduction) for s in checked}
    )
