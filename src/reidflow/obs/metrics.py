"""Prometheus metrics of a stage run (names ``reidflow_*``, base units, ``_total`` for counters).

Each stage run owns a private registry, so two runs in one process never mix. Batch-job
conventions for the Pushgateway: one grouping key per (job, stage, instance) that stays stable across
reruns; ``reidflow_last_success_timestamp_seconds`` is pushed only when the run succeeded (a failure is
pushed with ``pushadd`` so the previous success time stays visible).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    push_to_gateway,
    pushadd_to_gateway,
    start_http_server,
)

import reidflow
from reidflow.store.lineage import git_info, scrub

log = logging.getLogger(__name__)
PUSHGATEWAY_ENV = "REIDFLOW_PUSHGATEWAY_URL"


@dataclass
class StageMetrics:
    stage: str
    instance: str = "default"
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.samples = Counter("reidflow_samples_processed", "Samples processed by the stage", registry=r)
        self.steps = Counter("reidflow_steps", "Optimizer steps (training iterations) completed", registry=r)
        self.loss = Gauge("reidflow_loss", "Latest value of each loss term", ["term"], registry=r)
        self.lr = Gauge("reidflow_learning_rate", "Current learning rate", ["group"], registry=r)
        self.step_seconds = Histogram(
            "reidflow_step_duration_seconds",
            "Wall time of one training step",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.eval_map = Gauge(
            "reidflow_eval_map_ratio", "mAP of the last evaluation (0-1)", ["target", "model"], registry=r
        )
        self.eval_rank1 = Gauge(
            "reidflow_eval_rank1_ratio",
            "Rank-1 of the last evaluation (0-1)",
            ["target", "model"],
            registry=r,
        )
        self.last_success = Gauge(
            "reidflow_last_success_timestamp_seconds",
            "Unix time the stage last finished successfully",
            registry=r,
        )
        self.last_failure = Gauge(
            "reidflow_last_failure_timestamp_seconds", "Unix time the stage last failed", registry=r
        )
        self.duration = Gauge("reidflow_run_duration_seconds", "Wall time of the stage run", registry=r)
        info = Info("reidflow_build", "reidflow build information", registry=r)
        info.info(
            {
                "version": reidflow.__version__,
                "git_commit": str(git_info().get("git_commit") or "unknown"),
                "stage": self.stage,
            }
        )
        self._started = time.time()

    def observe_step(
        self, *, losses: dict[str, float], lrs: dict[str, float], seconds: float, samples: int
    ) -> None:
        for term, value in losses.items():
            self.loss.labels(term=term).set(float(value))
        for group, value in lrs.items():
            self.lr.labels(group=group).set(float(value))
        self.step_seconds.observe(seconds)
        self.samples.inc(samples)
        self.steps.inc()

    def observe_eval(self, target: str, model: str, mAP: float, rank1: float) -> None:
        self.eval_map.labels(target=target, model=model).set(mAP)
        self.eval_rank1.labels(target=target, model=model).set(rank1)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve /metrics during a long local run."""
        start_http_server(port, addr=addr, registry=self.registry)
        log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, port)

    @property
    def grouping_key(self) -> dict[str, str]:
        return {"stage": self.stage, "instance": self.instance}

    def finish(self, success: bool, gateway: str | None = None) -> None:
        """Record the outcome and push to the Pushgateway if one is configured."""
        now = time.time()
        self.duration.set(now - self._started)
        (self.last_success if success else self.last_failure).set(now)
        url = gateway or os.environ.get(PUSHGATEWAY_ENV)
        if not url or os.environ.get("RANK", "0") not in ("", "0"):
            return  # under torchrun only rank 0 reports the run
        pusher = push_to_gateway if success else pushadd_to_gateway
        registry = self.registry
        if not success:
            registry = _without(self.registry, "reidflow_last_success_timestamp_seconds")
        try:
            pusher(url, job="reidflow", grouping_key=self.grouping_key, registry=registry, timeout=10)
        except OSError as exc:  # metrics must never fail the stage
            log.warning("could not push metrics to %s: %s", scrub(url), exc)


def _without(registry: CollectorRegistry, name: str) -> CollectorRegistry:
    """A registry view that leaves out one metric family (the success time on a failed run)."""

    class _Filtered(CollectorRegistry):
        def collect(self):
            for family in registry.collect():
                if family.name != name:
                    yield family

    return _Filtered(auto_describe=False)
