"""Kubernetes settings of the pipeline's tasks, applied at compile time from the ``kfp:`` section.

Every task: retries with backoff, caching, S3 credentials from a secret as env (the optional keys,
such as the endpoint AWS users do not set, marked optional), a pod timeout, the run id (the pod's
``pipeline/runid`` label, through the downward API), the image reference for lineage, the metrics
settings, CPU/memory requests and limits. Training tasks also: GPUs, the GPU node
pool's node selector and tolerations, a memory-backed /dev/shm (PyTorch DataLoader workers pass
batches through shared memory; a container's default 64 MiB is too small), the training timeout and
the checkpoint store's sync interval.

Cluster settings travel as environment variables and platform settings, never as task inputs, so
changing them does not change any task's cache key.
"""

from kfp import dsl, kubernetes

from components.checkpoints import SYNC_ENV
from components.image import image_digest
from components.runtime import RUN_ID_ENV, RUN_ID_LABEL
from components.settings import KfpConfig, Resources
from reidflow.obs.live import METRICS_ADDR_ENV, PUSH_INTERVAL_ENV

SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"


def apply_resources(task: dsl.PipelineTask, res: Resources) -> dsl.PipelineTask:
    return (
        task.set_cpu_request(res.cpu_request)
        .set_cpu_limit(res.cpu_limit)
        .set_memory_request(res.memory_request)
        .set_memory_limit(res.memory_limit)
    )


def apply_secret(task: dsl.PipelineTask, cfg: KfpConfig) -> dsl.PipelineTask:
    """The S3 secret's keys as env: required keys in one mapping, optional ones in another (a missing
    required key fails the pod before it starts; a missing optional key leaves its variable unset)."""
    if cfg.s3_secret is None:
        return task
    required, optional = cfg.s3_secret.split()
    if required:
        kubernetes.use_secret_as_env(task, secret_name=cfg.s3_secret.name, secret_key_to_env=required)
    if optional:
        kubernetes.use_secret_as_env(
            task, secret_name=cfg.s3_secret.name, secret_key_to_env=optional, optional=True
        )
    return task


def apply_common(task: dsl.PipelineTask, cfg: KfpConfig, image: str) -> dsl.PipelineTask:
    """Settings every task gets (see the module docstring)."""
    apply_resources(task, cfg.default_resources)
    task.set_retry(
        num_retries=cfg.retry.num_retries,
        backoff_duration=cfg.retry.backoff_duration,
        backoff_factor=cfg.retry.backoff_factor,
        backoff_max_duration=cfg.retry.backoff_max_duration,
    )
    task.set_caching_options(enable_caching=cfg.caching)
    if image_digest(image):
        task.set_env_variable("REIDFLOW_IMAGE_DIGEST", image)  # lineage records only pinned images
    if cfg.pushgateway:
        task.set_env_variable("REIDFLOW_PUSHGATEWAY_URL", cfg.pushgateway)
        task.set_env_variable(PUSH_INTERVAL_ENV, f"{cfg.metrics.push_interval_seconds:g}")
    if cfg.metrics.port:
        task.set_env_variable(METRICS_ADDR_ENV, f"{cfg.metrics.address}:{cfg.metrics.port}")
    apply_secret(task, cfg)
    # the run id as env, not as a task input: an input would change every cache key on every run
    kubernetes.use_field_path_as_env(
        task, env_name=RUN_ID_ENV, field_path=f"metadata.labels['{RUN_ID_LABEL}']"
    )
    kubernetes.set_timeout(task, cfg.timeouts.default_seconds)
    return task


def apply_shm(task: dsl.PipelineTask, size: str) -> dsl.PipelineTask:
    return kubernetes.empty_dir_mount(
        task, volume_name=SHM_VOLUME, mount_path=SHM_PATH, medium="Memory", size_limit=size
    )


def apply_training(task: dsl.PipelineTask, cfg: KfpConfig) -> dsl.PipelineTask:
    """GPU, node pool, shared memory, timeout and checkpoint settings of a training task (after
    :func:`apply_common`)."""
    apply_resources(task, cfg.train_resources)
    if cfg.gpus > 0:
        task.set_accelerator_type(cfg.accelerator_type).set_accelerator_limit(cfg.gpus)
    for key, value in cfg.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in cfg.tolerations:
        kubernetes.add_toleration(
            task,
            key=tol.key,
            operator=tol.operator,
            value=tol.value,
            effect=tol.effect,
            toleration_seconds=tol.toleration_seconds,
        )
    kubernetes.set_timeout(task, cfg.timeouts.training_seconds)
    sync = cfg.checkpoints.sync_interval_seconds if cfg.checkpoints.enabled else 0
    task.set_env_variable(SYNC_ENV, f"{sync:g}")
    return apply_shm(task, cfg.shm_size)
