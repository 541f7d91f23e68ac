"""Exponential moving average ("mean net") of a model, as MMT uses it.

After step ``t`` (0-based) of the online net: ``θ_mean <- α θ_mean + (1 - α) θ`` with
``α = min(1 - 1/(t + 1), max_alpha)`` (so step 0 copies the net, and early steps average over all
steps so far). Only parameters are averaged; buffers (BN running statistics, batch counters) are
copied from the online net.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from reidflow.errors import ConfigError


def ema_alpha(step: int, max_alpha: float = 0.999) -> float:
    """``min(1 - 1/(step + 1), max_alpha)``."""
    if step < 0:
        raise ConfigError(f"ema: step must be >= 0, got {step}")
    if not 0.0 <= max_alpha < 1.0:
        raise ConfigError(f"ema: max_alpha must be in [0, 1), got {max_alpha}")
    return min(1.0 - 1.0 / (step + 1), max_alpha)


def make_mean_net(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (no parameter requires grad, so the engine never wraps it in DDP)."""
    mean = copy.deepcopy(model)
    for p in mean.parameters():
        p.requires_grad_(False)
    return mean


@torch.no_grad()
def update_mean_net(mean: nn.Module, model: nn.Module, step: int, max_alpha: float = 0.999) -> float:
    """Average ``model``'s parameters into ``mean`` (in place), copy its buffers; returns α."""
    alpha = ema_alpha(step, max_alpha)
    mean_params = dict(mean.named_parameters())
    params = dict(model.named_parameters())
    if mean_params.keys() != params.keys():
        missing = sorted(mean_params.keys() ^ params.keys())[:3]
        raise ConfigError(f"ema: the mean net and the net differ in parameters (e.g. {missing})")
    for name, p in params.items():
        target = mean_params[name]
        if target.shape != p.shape:
            raise ConfigError(
                f"ema: parameter {name!r} is {tuple(target.shape)} in the mean net, {tuple(p.shape)}"
            )
        target.mul_(alpha).add_(p.detach(), alpha=1.0 - alpha)
    mean_buffers = dict(mean.named_buffers())
    for name, b in model.named_buffers():
        mean_buffers[name].copy_(b)
    return alpha
