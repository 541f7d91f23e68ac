"""Live Prometheus metrics of a stage run: in a pipeline pod (components) and from the CLI alike.

Three things an end-of-stage push alone does not give a cluster: the run id in the Pushgateway
grouping key (``job=reidflow, stage, instance=kfp-<task>[-<item>], run_id``), so concurrent runs do
not overwrite each other's groups; pushes every ``REIDFLOW_PUSH_INTERVAL_S`` seconds while the stage
runs, so the Pushgateway shows live progress of a long training; and ``/metrics`` served on
``REIDFLOW_METRICS_ADDR`` (``host:port``, e.g. ``0.0.0.0:9400``) for a scraper in the cluster. The
Kubeflow pipeline sets these variables from the ``kfp.metrics`` section; the run id comes from
``REIDFLOW_RUN_ID``, which the pipeline maps from the pod's run label (and any launcher may set).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, pushadd_to_gateway

from reidflow.obs.metrics import PUSHGATEWAY_ENV, StageMetrics

log = logging.getLogger(__name__)
PUSH_INTERVAL_ENV = "REIDFLOW_PUSH_INTERVAL_S"
METRICS_ADDR_ENV = "REIDFLOW_METRICS_ADDR"
RUN_ID_ENV = "REIDFLOW_RUN_ID"
RUN_LABEL = "run_id"
_OUTCOME = frozenset({"reidflow_last_success_timestamp_seconds", "reidflow_last_failure_timestamp_seconds"})


@dataclass
class RunStageMetrics(StageMetrics):
    """:class:`StageMetrics` whose Pushgateway group also names the pipeline run."""

    run_id: str = ""

    @property
    def grouping_key(self) -> dict[str, str]:
        key = dict(super().grouping_key)
        if self.run_id:
            key[RUN_LABEL] = self.run_id
        return key


def progress_view(registry: CollectorRegistry) -> CollectorRegistry:
    """The registry without the outcome timestamps: a progress push must not claim success or failure
    (an unset gauge reads 0)."""

    class _Progress(CollectorRegistry):
        def collect(self):
            for family in registry.collect():
                if family.name not in _OUTCOME:
                    yield family

    return _Progress(auto_describe=False)


class PeriodicPush:
    """Push the metrics every ``interval`` seconds from a daemon thread until :meth:`stop`."""

    def __init__(self, metrics: StageMetrics, url: str, interval: float) -> None:
        self.metrics, self.url, self.interval = metrics, url, interval
        self.pushes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reidflow-metrics-push", daemon=True)

    def start(self) -> PeriodicPush:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()

    def push(self) -> None:
        try:
            pushadd_to_gateway(
                self.url,
                job="reidflow",
                grouping_key=self.metrics.grouping_key,
                registry=progress_view(self.metrics.registry),
                timeout=10,
            )
            self.pushes += 1
        except OSError as exc:  # metrics never fail the stage
            from reidflow.store.lineage import scrub

            log.warning("could not push metrics to %s: %s", scrub(self.url), exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def _serve(metrics: StageMetrics, address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        metrics.serve(int(port), addr=host or "0.0.0.0")
    except (OSError, ValueError) as exc:  # a busy port must not fail the stage
        log.warning("not serving /metrics on %r: %s", address, exc)


@contextmanager
def observed(stage: str, instance: str, run_id: str | None = None, port: int | None = None) -> Iterator[Any]:
    """Metrics of one stage run: served and pushed while it runs, pushed with the outcome at the end.

    ``run_id`` defaults to ``REIDFLOW_RUN_ID``; ``port`` (the CLI's ``--metrics-port``) serves
    ``/metrics`` on 127.0.0.1, otherwise ``REIDFLOW_METRICS_ADDR`` decides where, if anywhere."""
    if run_id is None:
        run_id = os.environ.get(RUN_ID_ENV, "").strip()
    metrics = RunStageMetrics(stage=stage, instance=instance, run_id=run_id)
    address = f"127.0.0.1:{port}" if port else os.environ.get(METRICS_ADDR_ENV, "").strip()
    if address:
        _serve(metrics, address)
    url = os.environ.get(PUSHGATEWAY_ENV, "").strip()
    interval = float(os.environ.get(PUSH_INTERVAL_ENV, "0") or 0)
    pusher = PeriodicPush(metrics, url, interval).start() if url and interval > 0 else None
    try:
        yield metrics
    except BaseException:
        if pusher:
            pusher.stop()
        metrics.finish(success=False)
        raise
    if pusher:
        pusher.stop()
    metrics.finish(success=True)
