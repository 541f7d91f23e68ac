"""Optimizers and per-iteration learning-rate schedules built from validated configs.

Schedules are closed-form functions of the iteration count (``last_epoch`` of the scheduler counts
iterations, not epochs), so a scheduler restored from ``state_dict`` continues exactly and its state
is plain JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from reidflow.config import StrictModel
from reidflow.errors import ConfigError

ParamsLike = nn.Module | Iterable[tuple[str, nn.Parameter]] | Iterable[nn.Parameter]


class OptimizerConfig(StrictModel):
    """One optimizer over a (filtered) set of parameters.

    ``include``/``exclude`` are regular expressions matched (``re.search``) against parameter names;
    a parameter is used when it matches any ``include`` pattern (all when empty) and no ``exclude``
    pattern. Biases (names ending in ``bias``) get ``lr * bias_lr_factor`` and ``weight_decay_bias``
    (``weight_decay`` when null). BIN/MetaBIN gates (names ending in ``.rho``) get
    ``lr * gate_lr_factor`` and no weight decay (decay would pull every gate toward instance norm).
    With ``gate_optimizer: sgd`` the gates leave this optimizer and get their own
    (:func:`build_gate_optimizer`): plain SGD at ``lr * gate_lr_factor``, constant, no momentum, no
    decay: exactly what MetaBIN's gates get, so a BIN baseline differs from MetaBIN only by the
    meta-learning.
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    bias_lr_factor: float = Field(1.0, gt=0)
    weight_decay_bias: float | None = Field(None, ge=0)
    gate_lr_factor: float = Field(1.0, gt=0)
    gate_optimizer: Literal["shared", "sgd"] = Field(
        "shared", description="gates in this optimizer, or on their own plain constant SGD (MetaBIN's)"
    )
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov=true needs name='sgd' and momentum > 0")
        for pattern in [*self.include, *self.exclude]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid parameter-name pattern {pattern!r}: {exc}") from exc
        return self


class SchedulerConfig(StrictModel):
    """Warm-up then a main schedule, all positions given in ``unit`` (epochs or iterations).

    - ``warmup``: length of the linear warm-up from ``warmup_start_factor`` × lr to lr (0 = none).
    - ``kind='multistep'``: lr × ``gamma`` at every milestone passed.
    - ``kind='cosine'``: cosine from lr to ``min_lr_factor`` × lr over ``total`` (after warm-up
      the cosine continues from where it is; warm-up multiplies the schedule, detectron2 style).
    - ``kind='constant'``: lr (after warm-up).
    Epoch positions are converted to iterations with ``iters_per_epoch`` (fractions allowed).
    """

    kind: Literal["constant", "multistep", "cosine"] = "multistep"
    unit: Literal["epoch", "iter"] = "epoch"
    warmup: float = Field(0, ge=0)
    warmup_start_factor: float = Field(0.01, gt=0, le=1)
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    total: float | None = Field(None, gt=0)
    min_lr_factor: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> SchedulerConfig:
        if self.kind == "multistep" and sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if self.kind == "cosine" and self.total is None:
            raise ValueError("kind='cosine' needs 'total' (schedule length in 'unit')")
        return self


class WarmupScheduler(LRScheduler):
    """lr(t) = base_lr × warmup(t) × main(t), with t the number of completed iterations."""

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        kind: str,
        warmup_iters: int,
        warmup_start_factor: float,
        milestones: list[int],
        gamma: float,
        total_iters: int | None,
        min_lr_factor: float,
    ) -> None:
        self.kind = kind
        self.warmup_iters = warmup_iters
        self.warmup_start_factor = warmup_start_factor
        self.milestones = milestones
        self.gamma = gamma
        self.total_iters = total_iters
        self.min_lr_factor = min_lr_factor
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        """The multiplier of the base learning rate after ``t`` iterations."""
        warm = 1.0
        if t < self.warmup_iters:
            alpha = t / self.warmup_iters
            warm = self.warmup_start_factor * (1 - alpha) + alpha
        if self.kind == "multistep":
            main = self.gamma ** sum(1 for m in self.milestones if t >= m)
        elif self.kind == "cosine":
            assert self.total_iters is not None
            progress = min(t, self.total_iters) / self.total_iters
            main = self.min_lr_factor + (1 - self.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            main = 1.0
        return warm * main

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor(self.last_epoch)
        return [float(base) * f for base in self.base_lrs]


def _named(params: ParamsLike) -> list[tuple[str | None, nn.Parameter]]:
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    items = list(params)
    named: list[tuple[str | None, nn.Parameter]] = []
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            named.append((None, item))  # type: ignore[arg-type]
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            named.append((str(item[0]), item[1]))
        else:
            raise ConfigError(
                f"build_optimizer: item {i} of params is {type(item).__name__}; expected an nn.Module, "
                "parameters, or (name, parameter) pairs"
            )
    return named


def _selected(
    named: list[tuple[str | None, nn.Parameter]], cfg: OptimizerConfig
) -> list[tuple[str | None, nn.Parameter]]:
    if (cfg.include or cfg.exclude) and any(name is None for name, _ in named):
        raise ConfigError(
            "optimizer.include/exclude filter by parameter name, but unnamed parameters were given; "
            "pass the module or named_parameters()"
        )
    chosen = []
    seen: set[int] = set()
    for name, param in named:
        if not param.requires_grad or id(param) in seen:
            continue
        if name is not None:
            if cfg.include and not any(re.search(p, name) for p in cfg.include):
                continue
            if any(re.search(p, name) for p in cfg.exclude):
                continue
        seen.add(id(param))
        chosen.append((name, param))
    if not chosen:
        raise ConfigError(
            f"optimizer: no trainable parameter left after filtering (include={cfg.include}, "
            f"exclude={cfg.exclude}); expected at least one parameter with requires_grad"
        )
    return chosen


def _is_gate(name: str | None) -> bool:
    return name is not None and (name == "rho" or name.endswith(".rho"))


def build_optimizer(params: ParamsLike, cfg: OptimizerConfig) -> Optimizer:
    """An optimizer over ``params`` (module, parameters, or named parameters) with bias groups."""
    chosen = _selected(_named(params), cfg)
    bias_wd = cfg.weight_decay if cfg.weight_decay_bias is None else cfg.weight_decay_bias
    gates = [p for name, p in chosen if _is_gate(name)] if cfg.gate_optimizer == "shared" else []
    regular = [p for name, p in chosen if not _is_gate(name) and not (name or "").endswith("bias")]
    biases = [p for name, p in chosen if not _is_gate(name) and (name or "").endswith("bias")]
    groups = []
    if regular:
        groups.append({"params": regular, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    if biases:
        groups.append({"params": biases, "lr": cfg.lr * cfg.bias_lr_factor, "weight_decay": bias_wd})
    if gates:
        groups.append({"params": gates, "lr": cfg.lr * cfg.gate_lr_factor, "weight_decay": 0.0})
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def build_gate_optimizer(params: ParamsLike, cfg: OptimizerConfig) -> torch.optim.SGD | None:
    """With ``gate_optimizer: sgd``, plain SGD on the BIN/MetaBIN gates at ``lr * gate_lr_factor``
    (pair it with a constant scheduler); ``None`` when the gates stay in the main optimizer or the
    model has none."""
    if cfg.gate_optimizer != "sgd":
        return None
    gates = [p for name, p in _selected(_named(params), cfg) if _is_gate(name)]
    if not gates:
        return None
    return torch.optim.SGD(gates, lr=cfg.lr * cfg.gate_lr_factor, momentum=0.0, weight_decay=0.0)


def build_scheduler(optimizer: Optimizer, cfg: SchedulerConfig, iters_per_epoch: int) -> WarmupScheduler:
    """A per-iteration scheduler; epoch positions become ``round(epochs * iters_per_epoch)``."""
    if iters_per_epoch < 1:
        raise ConfigError(f"build_scheduler: iters_per_epoch must be >= 1, got {iters_per_epoch}")
    scale = iters_per_epoch if cfg.unit == "epoch" else 1

    def to_iters(value: float) -> int:
        return round(value * scale)

    return WarmupScheduler(
        optimizer,
        kind=cfg.kind,
        warmup_iters=to_iters(cfg.warmup),
        warmup_start_factor=cfg.warmup_start_factor,
        milestones=[to_iters(m) for m in cfg.milestones] if cfg.kind == "multistep" else [],
        gamma=cfg.gamma,
        total_iters=max(1, to_iters(cfg.total)) if cfg.total is not None else None,
        min_lr_factor=cfg.min_lr_factor,
    )
