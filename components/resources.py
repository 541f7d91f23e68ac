"""Kubernetes settings of the pipeline's tasks, applied at compile time from the ``kfp:`` section.

Every task: retries with backoff, caching, S3 credentials from a secret as env, the image reference
for lineage, CPU/memory requests and limits. Training tasks (pretrain; later metabin, mmt, sda)
also: GPUs, the GPU node pool's node selector and tolerations, and a memory-backed /dev/shm (PyTorch
DataLoader workers pass batches through shared memory; a container's default 64 MiB is too small).
"""

from kfp import dsl, kubernetes

from components.image import image_digest
from components.settings import KfpConfig, Resources

SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"


def apply_resources(task: dsl.PipelineTask, res: Resources) -> dsl.PipelineTask:
    return (
        task.set_cpu_request(res.cpu_request)
        .set_cpu_limit(res.cpu_limit)
        .set_memory_request(res.memory_request)
        .set_memory_limit(res.memory_limit)
    )


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
    if cfg.pushgateway_url:
        task.set_env_variable("REIDFLOW_PUSHGATEWAY_URL", cfg.pushgateway_url)
    if cfg.s3_secret is not None:
        kubernetes.use_secret_as_env(
            task, secret_name=cfg.s3_secret.name, secret_key_to_env=dict(cfg.s3_secret.keys)
        )
    return task


def apply_shm(task: dsl.PipelineTask, size: str) -> dsl.PipelineTask:
    return kubernetes.empty_dir_mount(
        task, volume_name=SHM_VOLUME, mount_path=SHM_PATH, medium="Memory", size_limit=size
    )


def apply_training(task: dsl.PipelineTask, cfg: KfpConfig) -> dsl.PipelineTask:
    """GPU, node pool and shared-memory settings of a training task (after :func:`apply_common`)."""
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
    return apply_shm(task, cfg.shm_size)
