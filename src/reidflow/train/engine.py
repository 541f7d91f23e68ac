"""The one training loop.

Every method (source pretraining, MetaBIN, SDA's GAN, MMT+, the camera classifier) is a
:class:`Method`: it owns its state (modules, optimizers, schedulers, EMA copies, queues) and a
``step()``; the :class:`Engine` owns everything around it: devices, AMP, DDP, the data position,
learning-rate stepping, the NaN/Inf guard, checkpoints, exact resume and hooks.

Writing a method
----------------
``modules()``
    Every ``nn.Module`` with weights or buffers worth saving, by name (names become file names:
    ``[A-Za-z0-9_.-]+``). The engine moves them to the device; those with at least one
    ``requires_grad`` parameter are wrapped in DistributedDataParallel under torchrun. In
    ``step()``, call modules through ``ctx.module(name)`` (the DDP wrapper when distributed, so
    gradients are averaged) and use ``ctx.unwrap(name)`` for the raw module (attributes,
    ``torch.func.functional_call``, EMA updates). Frozen modules (EMA teachers) are never wrapped.
``optimizers()`` / ``schedulers()``
    By name. Schedulers are stepped by the engine once per iteration, after ``step()``; build them
    per iteration (see :mod:`reidflow.train.optim`). Use the same names for an optimizer and its
    scheduler when that reads well; they are independent dicts.
``step(batch, ctx) -> dict[str, float | Tensor]``
    One iteration on ``batch`` (already on ``ctx.device``). Forward inside ``with ctx.autocast():``
    and update with ``ctx.backward_and_step(loss, "optimizer_name")`` as many times as the method
    needs (MetaBIN: base step then meta step on two optimizers; a GAN: discriminator then
    generator). Return scalar losses/metrics to log (tensors are fine; they are averaged over
    ranks). Every rank must return the same keys. Random augmentation belongs here, on the device,
    with torch's global RNG, so a resumed run draws exactly the same numbers.
Optional
    ``extra_state() -> dict`` and ``load_extra_state(d)``: JSON-able values (tensors and NumPy
    arrays allowed) that are not module weights, e.g. MetaBIN's inner-step counter or MMT's number
    of clusters. On resume ``load_extra_state`` runs *before* weights are loaded, so the method can
    re-shape modules (e.g. a classifier sized by the number of pseudo identities) first.
    ``on_epoch_start(epoch, ctx)``: called when an epoch starts from its first batch (not when a
    run resumes in the middle of an epoch: that state must be in the checkpoint). If it replaces
    modules or optimizers (MMT re-clustering), it calls ``ctx.refresh()`` afterwards.

``backward_and_step(loss, optimizer_name, params=None, retain_graph=False, sync_grads=False)``
    ``loss`` is a tensor or a dict of named terms (summed; a non-finite term is reported by name).
    Order: check the loss is finite -> zero the optimizer's grads -> backward (scaled under fp16;
    ``params`` restricts which tensors receive gradients, e.g. only the gates rho) -> optionally
    average grads over ranks (``sync_grads=True`` when the forward bypassed DDP via ``unwrap``)
    -> unscale -> check the grad norm is finite -> clip (norm or value, from the config) ->
    optimizer.step -> zero_grad. A non-finite loss or gradient raises :class:`TrainingDiverged`
    before any weight changes (under fp16 a non-finite gradient is the GradScaler's business: the
    step is skipped and the scale lowered). Under DDP, ``params`` must cover every trainable
    parameter of any DDP-wrapped module the loss went through, or DDP waits for the missing grads.
"""

from __future__ import annotations

import atexit
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from reidflow.config import StrictModel
from reidflow.errors import ConfigError, DataError
from reidflow.store.locks import RunLock
from reidflow.train import checkpoint as ckpt_io
from reidflow.train import distributed as ddp
from reidflow.train.context import StepContext, TrainingDiverged
from reidflow.train.hooks import Hook, LoggingHook, MetricsHistoryHook, ProgressHook, RunInfo, StepInfo
from reidflow.train.runtime import (
    batch_size_of,
    configure_determinism,
    derive_seed,
    move_to_device,
    resolve_amp,
    resolve_device,
    seed_everything,
)

__all__ = [
    "Engine",
    "EngineConfig",
    "Method",
    "StepContext",
    "TrainResult",
    "TrainingDiverged",
    "seed_everything",
]

log = logging.getLogger("reidflow.train")

RESUMABLE_KEYS = (
    "engine.log_every",
    "engine.checkpoint_every",
    "engine.keep_last",
    "engine.max_iters",
    "num_workers",
    "eval",
    "keep_checkpoints",
    "checkpoint_dir",
    "name",
)
"""Params (dotted keys of a training stage's section, or their parents) that may differ between a
run and its ``--resume``: they change logging, checkpoint cadence, where the run stops, loader
workers (resume is exact with workers) or what happens after training, never the trained weights.
Any other difference is refused, naming the keys."""


def changed_keys(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two params mappings (added and removed keys too)."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                out.append(dotted)
            else:
                out += changed_keys(saved[key], current[key], dotted)
        return out
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)) and len(saved) == len(current):
        return [
            k
            for i, (a, b) in enumerate(zip(saved, current, strict=True))
            for k in changed_keys(a, b, f"{prefix}.{i}")
        ]
    return [] if saved == current else [prefix or "<params>"]


def _resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_KEYS)


class EngineConfig(StrictModel):
    """How to run the loop (not what to learn: that is the method's config).

    Length: ``epochs`` × iterations per epoch, or ``max_iters``; with both, training stops at
    whichever comes first (that is how a run is cut short and later resumed). Iterations per epoch
    are ``len(loader)`` capped by ``iters_per_epoch``. ``checkpoint_every`` counts iterations;
    a checkpoint is also written at the end. ``amp='auto'`` is bf16 on CUDA when supported, else
    fp16; on CPU it is off (bf16 CPU autocast is slow without AMX and changes the numbers).
    """

    epochs: int | None = Field(None, ge=1)
    max_iters: int | None = Field(None, ge=1)
    iters_per_epoch: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["off", "bf16", "fp16", "auto"] = "off"
    grad_clip: float | None = Field(None, gt=0)
    grad_clip_mode: Literal["norm", "value"] = "norm"
    checkpoint_every: int | None = Field(None, ge=1)
    keep_last: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0
    sync_bn: bool = False
    deterministic: bool = False
    find_unused_parameters: bool = False

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted ``off`` as false (tools that rewrite params.yaml drop the quotes)."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _check_length(self) -> EngineConfig:
        if self.epochs is None and self.max_iters is None:
            raise ValueError("set 'epochs' or 'max_iters' (or both: training stops at the first reached)")
        return self

    def epoch_length(self, batches_per_epoch: int) -> int:
        """Iterations per epoch for a sampler with ``batches_per_epoch`` (what schedules are built on)."""
        if batches_per_epoch < 1:
            raise DataError(
                f"engine: the batch sampler yields {batches_per_epoch} batches per epoch; expected >= 1"
            )
        return min(batches_per_epoch, self.iters_per_epoch or batches_per_epoch)

    def total_iters(self, batches_per_epoch: int) -> int:
        """Length of the run in iterations (see the class docstring)."""
        per_epoch = self.epoch_length(batches_per_epoch)
        lengths = [n for n in (self.epochs and self.epochs * per_epoch, self.max_iters) if n]
        return min(lengths)


@runtime_checkable
class Method(Protocol):
    """A training method: its state plus one iteration. See the module docstring."""

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, Optimizer]: ...

    def schedulers(self) -> dict[str, LRScheduler]: ...

    def step(self, batch: Any, ctx: StepContext) -> dict[str, float | Tensor]: ...


@dataclass
class TrainResult:
    final_iteration: int
    start_iteration: int
    history: list[dict[str, Any]]
    wall_time_s: float
    samples: int
    samples_per_s: float
    checkpoint: Path | None
    resumed_from: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# the engine


class Engine:
    """Runs a :class:`Method` over a DataLoader whose batch sampler supports resume.

    The loader must be built with ``batch_sampler=`` an object with ``set_epoch(epoch)``,
    ``skip(num_batches)``, ``__iter__`` (lists of indices) and ``__len__`` (batches per epoch,
    equal on every rank). The engine calls ``set_epoch`` at every epoch start and ``skip`` when
    resuming inside an epoch.
    """

    def __init__(
        self,
        method: Method,
        loader: DataLoader,
        cfg: EngineConfig,
        checkpoint_dir: str | Path | None = None,
        hooks: Sequence[Hook] = (),
        default_hooks: bool = True,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """``params``: the stage's resolved params section (JSON-able). It is stored in every
        checkpoint, and ``fit(resume=True)`` refuses a checkpoint made with params that differ outside
        :data:`RESUMABLE_KEYS`. The checkpoint directory is locked (``<checkpoint_dir>.lock``, naming
        this process and host) from ``fit`` until the process ends, so a second run writing the same
        output is refused instead of sharing the checkpoints."""
        missing = [
            f"{a}()"
            for a in ("modules", "optimizers", "schedulers", "step")
            if not callable(getattr(method, a, None))
        ]
        if missing:
            raise ConfigError(
                f"engine: the method {type(method).__name__} lacks {', '.join(missing)} "
                "(see reidflow.train.engine.Method)"
            )
        self.method = method
        self.loader = loader
        self.cfg = cfg
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.params = dict(params) if params is not None else None
        self.lock: RunLock | None = None
        self.history = MetricsHistoryHook()
        self.hooks: list[Hook] = [self.history]
        if default_hooks:
            self.hooks += [LoggingHook(every=cfg.log_every), ProgressHook()]
        self.hooks += list(hooks)
        self.sampler = self._check_sampler(loader)
        self.dist = ddp.current()
        self.device = torch.device("cpu")
        self.amp_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.raw_modules: dict[str, nn.Module] = {}
        self.wrapped: dict[str, nn.Module] = {}
        self.optimizers: dict[str, Optimizer] = {}
        self.schedulers: dict[str, LRScheduler] = {}
        self.iters_per_epoch = 0
        self.max_iters = 0
        self.last_checkpoint: Path | None = None
        self.ctx = StepContext(self)

    @staticmethod
    def _check_sampler(loader: DataLoader) -> Any:
        sampler = getattr(loader, "batch_sampler", None)
        missing = [m for m in ("set_epoch", "skip", "__len__") if not callable(getattr(sampler, m, None))]
        if sampler is None or missing:
            raise ConfigError(
                f"engine: the DataLoader's batch_sampler ({type(sampler).__name__}) lacks {missing}; build the loader "
                "as DataLoader(dataset, batch_sampler=<a reidflow sampler with set_epoch/skip/__len__>)"
            )
        return sampler

    # -- setup
    def bind(self) -> None:
        """(Re)read the method's modules/optimizers/schedulers; move to device; wrap for DDP."""
        modules = self.method.modules()
        for name in modules:
            ckpt_io.check_name("module", name)
        for name in self.method.optimizers():
            ckpt_io.check_name("optimizer", name)
        self.raw_modules, self.wrapped = {}, {}
        for name, module in modules.items():
            module.to(self.device)
            if self.dist.distributed and ddp.has_trainable_parameters(module):
                wrapper = ddp.wrap_ddp(
                    module,
                    self.device,
                    sync_bn=self.cfg.sync_bn,
                    find_unused_parameters=self.cfg.find_unused_parameters,
                )
                self.wrapped[name] = wrapper
                self.raw_modules[name] = wrapper.module
            else:
                self.wrapped[name] = module
                self.raw_modules[name] = module
        self.optimizers = dict(self.method.optimizers())
        self.schedulers = dict(self.method.schedulers())

    def _plan_length(self) -> None:
        self.iters_per_epoch = self.cfg.epoch_length(len(self.sampler))
        self.max_iters = self.cfg.total_iters(len(self.sampler))

    # -- checkpoints
    def _training_state(self, iteration: int) -> ckpt_io.TrainingState:
        extra = getattr(self.method, "extra_state", None)
        epoch, batch = divmod(iteration, self.iters_per_epoch)
        return ckpt_io.TrainingState(
            iteration=iteration,
            epoch=epoch,
            batch_in_epoch=batch,
            modules=self.raw_modules,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            scaler=self.scaler,
            extra_state=extra() if callable(extra) else {},
            rng_states=ddp.gather_objects(ckpt_io.capture_rng_state()),
            metadata={
                "world_size": self.dist.world_size,
                "iters_per_epoch": self.iters_per_epoch,
                "max_iters": self.max_iters,
                "seed": self.cfg.seed,
                "params": self.params,
                # the training curve so far: a resumed run's history equals an uninterrupted one's
                "history": self.history.records,
            },
        )

    def _assert_finite_weights(self, iteration: int) -> None:
        for name, module in self.raw_modules.items():
            for key, tensor in module.state_dict().items():
                if (
                    isinstance(tensor, Tensor)
                    and tensor.is_floating_point()
                    and not torch.isfinite(tensor).all()
                ):
                    raise TrainingDiverged(
                        iteration, f"{name}.{key} (a weight)", float("nan"), self.last_checkpoint
                    )

    def save_checkpoint(self, iteration: int) -> Path | None:
        """Write a checkpoint of the current state (rank 0 writes; every rank takes part)."""
        if self.checkpoint_dir is None:
            return None
        self._assert_finite_weights(iteration)
        state = self._training_state(iteration)
        path = None
        if self.dist.is_main:
            path = ckpt_io.save_checkpoint(self.checkpoint_dir, state, keep_last=self.cfg.keep_last)
        ddp.barrier()
        self.last_checkpoint = path or self.checkpoint_dir / ckpt_io.checkpoint_dir_name(iteration)
        return self.last_checkpoint

    def _find_resume_point(self, resume: bool) -> ckpt_io.Checkpoint | None:
        existing = ckpt_io.latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        if not resume:
            if existing is not None:
                raise ConfigError(
                    f"{self.checkpoint_dir}: already holds checkpoints (latest {existing.name}); pass --resume "
                    "to continue them, or use an empty checkpoint directory"
                )
            return None
        if self.checkpoint_dir is None:
            raise ConfigError("--resume needs a checkpoint directory (checkpoint_dir)")
        if existing is None:
            log.info("--resume given but %s holds no checkpoint; starting fresh", self.checkpoint_dir)
            return None
        ckpt = ckpt_io.load_checkpoint(existing)
        self._check_resume_params(ckpt)
        return ckpt

    def _check_resume_params(self, ckpt: ckpt_io.Checkpoint) -> None:
        saved = ckpt.metadata.get("params")
        if saved is None or self.params is None:
            return
        current = json.loads(json.dumps(self.params, default=str))
        refused = [k for k in changed_keys(saved, current) if not _resumable(k)]
        if refused:
            shown = ", ".join(refused[:8]) + (f" (+{len(refused) - 8} more)" if len(refused) > 8 else "")
            raise ConfigError(
                f"--resume: {ckpt.path} was trained with different params: {shown} changed; restore them "
                f"or start a fresh run (on resume only {', '.join(RESUMABLE_KEYS)} may change)"
            )

    def _restore(self, ckpt: ckpt_io.Checkpoint) -> None:
        ckpt_io.restore(ckpt, self.raw_modules, self.optimizers, self.schedulers, self.scaler)
        saved_world = int(ckpt.metadata.get("world_size", 1))
        if saved_world == self.dist.world_size and len(ckpt.rng_states) == saved_world:
            ckpt_io.restore_rng_state(ckpt.rng_states[self.dist.rank])
        else:
            log.warning(
                "%s was written by %d process(es), now %d: RNG streams are re-seeded, so random augmentation "
                "will not repeat exactly",
                ckpt.path,
                saved_world,
                self.dist.world_size,
            )
            seed_everything(derive_seed(self.cfg.seed + ckpt.iteration, self.dist.rank))
        self.last_checkpoint = ckpt.path

    # -- the loop
    def fit(self, resume: bool = False) -> TrainResult:
        """Train to the configured length; with ``resume`` continue from the latest checkpoint."""
        self.dist = ddp.current()
        if self.checkpoint_dir is not None and self.dist.is_main and self.lock is None:
            lock = RunLock(
                self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".lock"), "these checkpoints"
            )
            self.lock = lock.acquire()
            atexit.register(lock.release)
        self.device = resolve_device(self.cfg.device, self.dist.local_rank)
        self.amp_dtype = resolve_amp(self.cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        configure_determinism(self.cfg.deterministic, self.device)
        self._plan_length()
        ckpt = self._find_resume_point(resume)
        if ckpt is not None:
            load_extra = getattr(self.method, "load_extra_state", None)
            if callable(load_extra):
                load_extra(ckpt.extra_state)
        self.bind()
        if ckpt is not None:
            self._restore(ckpt)
            start = ckpt.iteration
            saved = ckpt.metadata.get("history") or []
            self.history.records = [dict(r) for r in saved if int(r.get("iteration", 0)) <= start]
        else:
            seed_everything(derive_seed(self.cfg.seed, self.dist.rank))
            for name, module in self.raw_modules.items():
                if self.wrapped[name] is module:  # DDP wrappers broadcast their own weights
                    ddp.broadcast_module(module)
            start = 0
        run = RunInfo(
            start,
            self.max_iters,
            self.iters_per_epoch,
            self.dist.rank,
            self.dist.world_size,
            str(ckpt.path) if ckpt else None,
            self.raw_modules,
        )
        self._call_hooks("before_train", run)
        started = time.perf_counter()
        try:
            iteration, samples = self._loop(start, started)
            if self.last_checkpoint is None or self.last_checkpoint.name != ckpt_io.checkpoint_dir_name(
                iteration
            ):
                self.save_checkpoint(iteration)
        except BaseException as error:
            self._call_hooks("on_error", error)
            raise
        wall = time.perf_counter() - started
        result = TrainResult(
            final_iteration=iteration,
            start_iteration=start,
            history=self.history.records,
            wall_time_s=wall,
            samples=samples,
            samples_per_s=samples / wall if wall > 0 else 0.0,
            checkpoint=self.last_checkpoint if self.checkpoint_dir else None,
            resumed_from=ckpt.path if ckpt else None,
        )
        self._call_hooks("after_train", result)
        return result

    def _loop(self, start: int, started: float) -> tuple[int, int]:
        iteration, samples_total = start, 0
        on_epoch_start = getattr(self.method, "on_epoch_start", None)
        while iteration < self.max_iters:
            epoch, first_batch = divmod(iteration, self.iters_per_epoch)
            self.ctx.epoch = epoch
            self.sampler.set_epoch(epoch)
            if first_batch:
                self.sampler.skip(first_batch)
            elif callable(on_epoch_start):
                self.ctx.iteration, self.ctx.batch_in_epoch = iteration, 0
                on_epoch_start(epoch, self.ctx)
            last_step: StepInfo | None = None
            for batch_index, batch in zip(
                range(first_batch, self.iters_per_epoch), self._batches(epoch, first_batch)
            ):
                last_step = self._one_step(batch, iteration, epoch, batch_index, samples_total, started)
                iteration, samples_total = last_step.iteration, last_step.samples_total
                self._call_hooks("after_step", last_step)
                if (
                    self.cfg.checkpoint_every
                    and iteration % self.cfg.checkpoint_every == 0
                    and iteration < self.max_iters
                ):
                    self.save_checkpoint(iteration)
                if iteration >= self.max_iters:
                    break
            if last_step is not None and last_step.batch_in_epoch == self.iters_per_epoch - 1:
                self._call_hooks("after_epoch", epoch, last_step)
        return iteration, samples_total

    def _batches(self, epoch: int, first_batch: int) -> Iterator[Any]:
        # Creating a DataLoader iterator draws a worker base seed from torch's global RNG; fork
        # the RNG so that draw does not shift the stream the method's augmentation uses (a resumed
        # run creates its iterator at a different point than an uninterrupted one).
        with torch.random.fork_rng(devices=[]):
            iterator = iter(self.loader)
        expected = self.iters_per_epoch - first_batch
        produced = 0
        try:
            for batch in iterator:
                produced += 1
                yield move_to_device(batch, self.device)
                if produced >= expected:
                    return
        finally:
            del iterator
        if produced < expected:
            raise DataError(
                f"engine: the batch sampler yielded {first_batch + produced} batches in epoch {epoch}, but "
                f"len() promised {len(self.sampler)} (iterations per epoch {self.iters_per_epoch})"
            )

    def _one_step(
        self, batch: Any, iteration: int, epoch: int, batch_index: int, samples_total: int, started: float
    ) -> StepInfo:
        ctx = self.ctx
        ctx.iteration, ctx.epoch, ctx.batch_in_epoch = iteration, epoch, batch_index
        ctx.grad_norms = {}
        lrs = self._current_lrs()
        t0 = time.perf_counter()
        raw = self.method.step(batch, ctx)
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{type(self.method).__name__}.step() must return a dict of losses/metrics, got {type(raw).__name__}"
            )
        for scheduler in self.schedulers.values():
            scheduler.step()
        metrics = self._reduce_metrics(raw)
        metrics.update({f"grad_norm/{k}": v for k, v in ctx.grad_norms.items()})
        samples = batch_size_of(batch) * self.dist.world_size
        return StepInfo(
            iteration=iteration + 1,
            epoch=epoch,
            batch_in_epoch=batch_index,
            max_iters=self.max_iters,
            metrics=metrics,
            lrs=lrs,
            step_seconds=time.perf_counter() - t0,
            samples=samples,
            samples_total=samples_total + samples,
            elapsed_seconds=time.perf_counter() - started,
        )

    def _current_lrs(self) -> dict[str, float]:
        lrs = {}
        for name, optimizer in self.optimizers.items():
            for i, group in enumerate(optimizer.param_groups):
                lrs[name if i == 0 else f"{name}.{i}"] = float(group["lr"])
        return lrs

    def _reduce_metrics(self, raw: Mapping[str, float | Tensor]) -> dict[str, float]:
        if not raw:
            return {}
        values = []
        for key, value in raw.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise ConfigError(
                        f"{type(self.method).__name__}.step(): metric {key!r} has shape "
                        f"{tuple(value.shape)}; expected a scalar"
                    )
                values.append(value.detach().reshape(()).to(self.device, torch.float64))
            elif isinstance(value, (int, float)):
                values.append(torch.tensor(float(value), dtype=torch.float64, device=self.device))
            else:
                raise ConfigError(
                    f"{type(self.method).__name__}.step(): metric {key!r} is a {type(value).__name__}; "
                    "expected a float or a scalar tensor"
                )
        stacked = ddp.all_reduce_mean(torch.stack(values)) if self.dist.distributed else torch.stack(values)
        return dict(zip(raw.keys(), stacked.tolist(), strict=True))

    def _call_hooks(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            if hook.all_ranks or self.dist.is_main:
                getattr(hook, event)(*args)
