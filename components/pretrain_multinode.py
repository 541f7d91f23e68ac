"""KFP component launching multi-node pretraining as a PyTorchJob or a Trainer v2 TrainJob
(see :mod:`components.pytorchjob`)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


def pretrain_multinode(
    params_yaml: str,
    overrides: list,
    backbone: str,
    shards: Input[Dataset],
    artifact_root: str,
    image: str,
    cluster: str,
    shards_digest: str,
    model: Output[Model],
    task_name: str,
) -> NamedTuple("PretrainOutputs", [("digest", str)]):
    """Pretrain ``backbone`` as a job over ``kfp.distributed.nodes`` pods; outputs go to S3.

    ``params_yaml`` holds the ``pretrain`` section; ``cluster`` the ``kfp`` section (JSON) that shapes
    the job (nodes, GPUs, backend, namespace, placement, secret). ``shards_digest`` keys the cache.
    """
    import os
    from collections import namedtuple

    import yaml

    from components import pytorchjob, runtime
    from components.settings import KfpConfig
    from reidflow.errors import ConfigError

    run_id = runtime.current_run_id(model)
    if not artifact_root.startswith("s3://"):
        raise ConfigError(
            "kfp.artifact_root: multi-node training needs s3://bucket/prefix "
            "(the job's pods cannot see this task's local artifact directory)"
        )
    params = runtime.load_params_text(params_yaml, [*overrides, f"pretrain.model.backbone={backbone}"])
    cfg = KfpConfig.model_validate(runtime.load_params_text(cluster))
    sources, target = runtime.training_inputs(runtime.read_manifest(shards))
    uri = runtime.output_uri(model, artifact_root, run_id, task_name, item=backbone)
    inputs = [("source", s) for s in sources] + ([("target", target)] if target else [])
    cli_args = runtime.stage_cli_args("pretrain", pytorchjob.PARAMS_PATH, inputs, uri, task_name)
    env = {"REIDFLOW_RUN_ID": run_id, "REIDFLOW_ORCHESTRATOR": "kfp"}
    for name in ("REIDFLOW_IMAGE_DIGEST", "REIDFLOW_PUSHGATEWAY_URL", "REIDFLOW_PUSH_INTERVAL_S"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    own_namespace = pytorchjob.pod_namespace()
    namespace = cfg.distributed.namespace or own_namespace or "kubeflow"
    manifest = pytorchjob.job_manifest(
        cfg.distributed.backend,
        name=pytorchjob.job_name("reidflow", run_id[:8], task_name, backbone),
        namespace=namespace,
        image=image,
        cli_args=cli_args,
        params_yaml=yaml.safe_dump(params, sort_keys=False),
        nodes=cfg.distributed.nodes,
        cfg=cfg,
        env=env,
        owner=pytorchjob.owner_reference() if namespace == own_namespace else None,
    )
    pytorchjob.apply_and_wait(manifest, cfg.distributed.timeout_seconds)
    digest = runtime.publish(model, uri, backbone=backbone)
    return namedtuple("PretrainOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(pretrain_multinode, base_image=image, install_kfp_package=False)


component = build()
