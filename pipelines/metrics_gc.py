"""Delete stale reidflow groups from a Prometheus Pushgateway.

Every pipeline run pushes its own groups (``job=reidflow, stage, instance, run_id``) and the
Pushgateway keeps a group until someone deletes it, so finished runs pile up. :func:`prune` lists the
groups (``GET /api/v1/metrics``) and deletes those of job ``reidflow`` whose last push is older than
a cutoff (``DELETE /metrics/job/reidflow/<label>/<value>…``, which removes exactly one group).
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

JOB = "reidflow"


@dataclass(frozen=True)
class Group:
    labels: dict[str, str]
    last_push: float

    @property
    def grouping_key(self) -> dict[str, str]:
        return {k: v for k, v in self.labels.items() if k != "job"}


def list_groups(url: str, timeout: float = 10) -> list[Group]:
    """The reidflow groups on the Pushgateway at ``url`` with the time of their last push."""
    with urllib.request.urlopen(url.rstrip("/") + "/api/v1/metrics", timeout=timeout) as resp:
        body: dict[str, Any] = json.loads(resp.read().decode())
    groups = []
    for entry in body.get("data") or []:
        labels = dict(entry.get("labels") or {})
        if labels.get("job") != JOB:
            continue
        series = (entry.get("push_time_seconds") or {}).get("time_series") or [{}]
        groups.append(Group(labels, float(series[0].get("value") or 0)))
    return groups


def prune(url: str, older_than_s: float, dry_run: bool = False, now: float | None = None) -> list[Group]:
    """Delete the reidflow groups last pushed more than ``older_than_s`` seconds ago; returns them."""
    from prometheus_client import delete_from_gateway

    cutoff = (time.time() if now is None else now) - older_than_s
    stale = [g for g in list_groups(url) if g.last_push < cutoff]
    if not dry_run:
        for group in stale:
            delete_from_gateway(url, job=JOB, grouping_key=group.grouping_key, timeout=10)
    return stale
