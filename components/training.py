"""What every training component does around its stage call, in one place.

Checkpoints restored from and kept in the artifact store (:mod:`components.checkpoints`), the stage
run in-process with live metrics (:mod:`reidflow.obs.live`) or under torchrun over the pod's GPUs,
then the artifact published and the checkpoint store dropped. Imported inside component bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from components import checkpoints, runtime
from reidflow.obs import live as observe


def train_and_publish(
    *,
    stage: str,
    cfg: Any,
    params: dict[str, Any],
    output: str,
    artifact: runtime.KfpArtifact,
    run_id: str,
    task_name: str,
    train: Callable[[tuple[Any, ...], bool], Any],
    gpus: int = 1,
    cli_inputs: list[tuple[str, str]] | None = None,
    mode: str = "",
    item: str = "",
    extra: dict[str, Any] | None = None,
) -> str:
    """Train into ``output`` and publish it on ``artifact``; returns the content digest.

    ``train(hooks, resume)`` runs the stage in this process (``gpus`` <= 1); with ``gpus`` > 1 the
    stage's CLI runs under torchrun with ``cli_inputs`` (it pushes its metrics when it ends). The
    stage always resumes from the latest checkpoint it finds: a fresh task finds none.
    """
    from reidflow.obs.train_hook import PrometheusHook

    sync = checkpoints.for_task(getattr(cfg, "checkpoint_dir", None), output, artifact)
    if sync is not None:
        sync.restore()
    with sync if sync is not None else nullcontext():
        if gpus > 1:
            runtime.run_torchrun(
                stage, gpus, params, cli_inputs or [], output, run_id, task_name, mode, resume=True
            )
        else:
            instance = runtime.metrics_instance(task_name, item)
            with runtime.private_s3_cache(), observe.observed(stage, instance, run_id) as metrics:
                train((PrometheusHook(metrics),), True)
    digest = runtime.publish(artifact, output, **(extra or {}))
    if sync is not None:
        sync.store.clear()
    return digest
