"""The services the engine offers a method's ``step()``: modules, AMP, backward/step with guards.

See :mod:`reidflow.train.engine` for how a method uses them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from reidflow.errors import ConfigError, ReidflowError
from reidflow.train import distributed as ddp

if TYPE_CHECKING:
    from reidflow.train.engine import Engine


class TrainingDiverged(ReidflowError):
    """A loss or gradient became NaN/Inf; training stopped before applying it."""

    def __init__(self, iteration: int, what: str, value: float, last_checkpoint: Path | None) -> None:
        self.iteration = iteration
        self.what = what
        self.value = value
        self.last_checkpoint = last_checkpoint
        kept = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
        super().__init__(
            f"training diverged at iteration {iteration}: {what} is {value} ({kept}, left intact)"
        )


def _params_of(optimizer: Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _total_loss(loss: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    if isinstance(loss, Tensor):
        return loss, {}
    if not isinstance(loss, Mapping) or not loss:
        raise ConfigError(
            f"backward_and_step: loss must be a tensor or a non-empty dict of tensors, got {loss!r}"
        )
    terms = dict(loss)
    total = sum(terms.values())
    assert isinstance(total, Tensor)
    return total, terms


class StepContext:
    """The engine's services for one method; the same object is passed to every ``step()``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.iteration = 0  # 0-based index of the current step (= iterations completed before it)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.grad_norms: dict[str, float] = {}

    # -- facts
    @property
    def device(self) -> torch.device:
        return self._engine.device

    @property
    def rank(self) -> int:
        return self._engine.dist.rank

    @property
    def world_size(self) -> int:
        return self._engine.dist.world_size

    @property
    def is_main(self) -> bool:
        return self._engine.dist.is_main

    @property
    def iters_per_epoch(self) -> int:
        return self._engine.iters_per_epoch

    @property
    def max_iters(self) -> int:
        return self._engine.max_iters

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self._engine.amp_dtype

    # -- modules
    def module(self, name: str) -> nn.Module:
        """The module to call in forward: the DDP wrapper when distributed and trainable."""
        return self._lookup(self._engine.wrapped, name, "module")

    def unwrap(self, name: str) -> nn.Module:
        """The raw module (never a DDP wrapper)."""
        return self._lookup(self._engine.raw_modules, name, "module")

    def optimizer(self, name: str) -> Optimizer:
        return self._lookup(self._engine.optimizers, name, "optimizer")

    @staticmethod
    def _lookup(table: Mapping[str, Any], name: str, kind: str) -> Any:
        try:
            return table[name]
        except KeyError:
            raise ConfigError(
                f"step context: no {kind} named {name!r}; the method declares {sorted(table)}"
            ) from None

    def refresh(self) -> None:
        """Re-read ``modules()/optimizers()/schedulers()`` after the method replaced some."""
        self._engine.bind()

    # -- numerics
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward pass (no-op when AMP is off)."""
        dtype = self._engine.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def all_reduce_mean(self, value: Tensor) -> Tensor:
        return ddp.all_reduce_mean(value)

    def backward_and_step(
        self,
        loss: Tensor | Mapping[str, Tensor],
        optimizer: str | Sequence[str],
        params: Sequence[Tensor] | None = None,
        retain_graph: bool = False,
        sync_grads: bool = False,
    ) -> None:
        """Backward, guard, clip, step and zero one optimizer (see the module docstring).

        ``optimizer`` may name several optimizers: one backward, then each is guarded, clipped and
        stepped on its own parameters (e.g. a model's weights on Adam and its BIN gates on plain SGD).
        """
        names = [optimizer] if isinstance(optimizer, str) else list(optimizer)
        opts = [self.optimizer(name) for name in names]
        engine = self._engine
        total, terms = _total_loss(loss)
        self._check_loss(total, terms, "+".join(names))
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        scaler = engine.scaler
        to_backward = scaler.scale(total) if scaler is not None else total
        to_backward.backward(retain_graph=retain_graph, inputs=list(params) if params is not None else None)
        for name, opt in zip(names, opts, strict=True):
            stepped = [p for p in _params_of(opt) if p.grad is not None]
            if sync_grads:
                ddp.all_reduce_grads_mean(stepped)
            if scaler is not None:
                scaler.unscale_(opt)
            norm = self._grad_norm_and_clip(stepped)
            self.grad_norms[name] = norm
            if not math.isfinite(norm) and scaler is None:
                raise TrainingDiverged(
                    self.iteration, f"the gradient norm of optimizer {name!r}", norm, engine.last_checkpoint
                )
        for opt in opts:
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()
        if scaler is not None:
            scaler.update()
        for opt in opts:
            opt.zero_grad(set_to_none=True)

    def _check_loss(self, total: Tensor, terms: Mapping[str, Tensor], optimizer: str) -> None:
        if total.numel() != 1:
            raise ConfigError(
                f"backward_and_step({optimizer!r}): loss must be a scalar, got shape {tuple(total.shape)}"
            )
        value = float(total.detach())
        if math.isfinite(value):
            return
        for name, term in terms.items():
            term_value = float(term.detach().float().sum())
            if not math.isfinite(term_value):
                raise TrainingDiverged(
                    self.iteration,
                    f"loss term {name!r} (optimizer {optimizer!r})",
                    term_value,
                    self._engine.last_checkpoint,
                )
        raise TrainingDiverged(
            self.iteration, f"the loss of optimizer {optimizer!r}", value, self._engine.last_checkpoint
        )

    def _grad_norm_and_clip(self, params: list[Tensor]) -> float:
        if not params:
            return 0.0
        cfg = self._engine.cfg
        grads = [p.grad for p in params if p.grad is not None]
        if cfg.grad_clip is not None and cfg.grad_clip_mode == "norm":
            norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            norm = nn.utils.get_total_norm(grads)
            if cfg.grad_clip is not None and math.isfinite(float(norm)):
                nn.utils.clip_grad_value_(params, cfg.grad_clip)
        return float(norm)
