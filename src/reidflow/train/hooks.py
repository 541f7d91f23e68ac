"""Training hooks: small observers the engine calls around the loop.

A hook sees plain records (:class:`RunInfo`, :class:`StepInfo`), never the engine itself, so hooks
cannot reach into the loop's state and change it behind its back. Hooks run on rank 0 only unless
``all_ranks`` is True (needed when the hook itself runs collectives, e.g. a distributed evaluation).

:class:`StepInfo` carries everything an exporter (e.g. Prometheus) needs: losses/metrics averaged
over ranks, learning rates, step duration and the number of samples processed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from reidflow.errors import ConfigError
from reidflow.obs.progress import Progress

if TYPE_CHECKING:
    from reidflow.train.engine import TrainResult

log = logging.getLogger("reidflow.train")


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do; passed to :meth:`Hook.before_train`."""

    start_iteration: int
    max_iters: int
    iters_per_epoch: int
    rank: int
    world_size: int
    resumed_from: str | None
    modules: Mapping[str, nn.Module] = field(default_factory=dict)  # unwrapped (no DDP)


@dataclass(frozen=True)
class StepInfo:
    """One finished iteration.

    ``iteration`` counts completed iterations (1 after the first step); ``batch_in_epoch`` is the
    0-based index of the batch just used. ``metrics`` are the step's values averaged over ranks
    (plus ``grad_norm/<optimizer>``); ``lrs`` maps ``<optimizer>`` (first param group) and
    ``<optimizer>.<i>`` (further groups) to learning rates used in this step. ``samples`` counts
    samples of this step over all ranks.
    """

    iteration: int
    epoch: int
    batch_in_epoch: int
    max_iters: int
    metrics: dict[str, float]
    lrs: dict[str, float]
    step_seconds: float
    samples: int
    samples_total: int
    elapsed_seconds: float

    @property
    def is_last(self) -> bool:
        return self.iteration >= self.max_iters


class Hook:
    """Base class; override what you need. Exceptions from hooks propagate and stop training."""

    all_ranks: bool = False

    def before_train(self, run: RunInfo) -> None:
        pass

    def after_step(self, step: StepInfo) -> None:
        pass

    def after_epoch(self, epoch: int, step: StepInfo) -> None:
        pass

    def after_train(self, result: TrainResult) -> None:
        pass

    def on_error(self, error: BaseException) -> None:
        pass


def _summary(step: StepInfo) -> str:
    metrics = " ".join(f"{k}={v:.4g}" for k, v in step.metrics.items() if not k.startswith("grad_norm/"))
    lrs = " ".join(f"lr/{k}={v:.3g}" for k, v in step.lrs.items() if "." not in k)
    return f"{metrics} {lrs}".strip()


class LoggingHook(Hook):
    """Logs one line every ``every`` iterations and at the last one (rank 0)."""

    def __init__(self, every: int = 50, logger: logging.Logger | None = None) -> None:
        self.every = every
        self.logger = logger or log
        self._window_start = time.monotonic()
        self._window_samples = 0

    def before_train(self, run: RunInfo) -> None:
        where = f"resuming from {run.resumed_from}" if run.resumed_from else "starting"
        self.logger.info(
            "training %s at iteration %d of %d (%d per epoch, %d process(es))",
            where,
            run.start_iteration,
            run.max_iters,
            run.iters_per_epoch,
            run.world_size,
        )
        self._window_start = time.monotonic()

    def after_step(self, step: StepInfo) -> None:
        self._window_samples += step.samples
        if step.iteration % self.every and not step.is_last:
            return
        now = time.monotonic()
        rate = self._window_samples / max(now - self._window_start, 1e-9)
        self._window_start, self._window_samples = now, 0
        self.logger.info(
            "iter %d/%d epoch %d %s | %.1f samples/s, %.3f s/step",
            step.iteration,
            step.max_iters,
            step.epoch,
            _summary(step),
            rate,
            step.step_seconds,
        )

    def on_error(self, error: BaseException) -> None:
        self.logger.error("training stopped: %s", error)


class ProgressHook(Hook):
    """A progress bar over iterations (a bar on a TTY, periodic log lines otherwise)."""

    def __init__(self, enabled: bool | None = None, log_every_s: float = 30.0) -> None:
        self.enabled = enabled
        self.log_every_s = log_every_s
        self.progress: Progress | None = None

    def before_train(self, run: RunInfo) -> None:
        self.progress = Progress(
            run.max_iters,
            "train",
            unit="it",
            enabled=self.enabled,
            log_every_s=self.log_every_s,
            initial=run.start_iteration,
        )

    def after_step(self, step: StepInfo) -> None:
        if self.progress is not None:
            shown = {k: v for k, v in step.metrics.items() if not k.startswith("grad_norm/")}
            self.progress.update(1, **dict(list(shown.items())[:4]))

    def after_train(self, result: TrainResult) -> None:
        self._close()

    def on_error(self, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None


class MetricsHistoryHook(Hook):
    """Keeps one record per iteration: iteration, epoch, metrics, lrs, step time, samples.

    ``records`` is what a stage saves as ``training_curve.json`` (:meth:`save_json`) or plots.
    Runs on every rank (values are already averaged over ranks) so every rank's result has it.
    """

    all_ranks = True

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def after_step(self, step: StepInfo) -> None:
        record: dict[str, Any] = {"iteration": step.iteration, "epoch": step.epoch}
        record.update(step.metrics)
        record.update({f"lr/{k}": v for k, v in step.lrs.items()})
        record["step_seconds"] = step.step_seconds
        record["samples"] = step.samples
        self.records.append(record)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"records": self.records}, indent=1))
        return path


@contextmanager
def preserved_training_modes(modules: Mapping[str, nn.Module]) -> Iterator[None]:
    """Restore every submodule's ``training`` flag afterwards (evaluation calls ``.eval()``)."""
    saved = [(m, m.training) for module in modules.values() for m in module.modules()]
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


@dataclass
class EvalRecord:
    iteration: int
    metrics: dict[str, float]
    seconds: float


class PeriodicEvalHook(Hook):
    """Calls ``fn(iteration)`` every ``every`` iterations (and after the last one if ``at_end``).

    ``fn`` returns a dict of metrics (or None); results are kept in ``results`` and logged.
    Training modes of all modules are restored after the call. Set ``all_ranks=True`` when ``fn``
    runs collectives (distributed feature extraction); otherwise it runs on rank 0 only.
    """

    def __init__(
        self,
        fn: Callable[[int], Mapping[str, float] | None],
        every: int,
        *,
        at_end: bool = True,
        all_ranks: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        if every < 1:
            raise ConfigError(f"PeriodicEvalHook: every must be >= 1, got {every}")
        self.fn = fn
        self.every = every
        self.at_end = at_end
        self.all_ranks = all_ranks
        self.logger = logger or log
        self.results: list[EvalRecord] = []
        self._modules: Mapping[str, nn.Module] = {}

    def before_train(self, run: RunInfo) -> None:
        self._modules = run.modules

    def after_step(self, step: StepInfo) -> None:
        if step.iteration % self.every == 0 or (self.at_end and step.is_last):
            self.run(step.iteration)

    def run(self, iteration: int) -> EvalRecord:
        start = time.monotonic()
        with preserved_training_modes(self._modules):
            metrics = dict(self.fn(iteration) or {})
        record = EvalRecord(iteration, {k: float(v) for k, v in metrics.items()}, time.monotonic() - start)
        self.results.append(record)
        self.logger.info(
            "eval at iter %d (%.1fs): %s",
            iteration,
            record.seconds,
            " ".join(f"{k}={v:.4g}" for k, v in record.metrics.items()),
        )
        return record

    def as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.results]
