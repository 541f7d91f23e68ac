"""Engine hook feeding :class:`reidflow.obs.metrics.StageMetrics` after every step."""

from __future__ import annotations

from reidflow.obs.metrics import StageMetrics
from reidflow.train.hooks import Hook, StepInfo


class PrometheusHook(Hook):
    """Loss terms, learning rates, step time and samples of every iteration (rank 0)."""

    def __init__(self, metrics: StageMetrics) -> None:
        self.metrics = metrics

    def after_step(self, step: StepInfo) -> None:
        losses = {k: v for k, v in step.metrics.items() if not k.startswith("grad_norm/")}
        self.metrics.observe_step(
            losses=losses, lrs=step.lrs, seconds=step.step_seconds, samples=step.samples
        )
