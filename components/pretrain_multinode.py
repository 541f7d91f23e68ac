"""KFP component launching multi-node pretraining as a PyTorchJob (see :mod:`components.pytorchjob`)."""

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
    params_digest: str,
    shards_digest: str,
    model: Output[Model],
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_name: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
) -> NamedTuple("PretrainOutputs", [("digest", str)]):
    """Pretrain ``backbone`` as a PyTorchJob over ``kfp.distributed.nodes`` pods; outputs go to S3."""
    from collections import namedtuple

    import yaml

    from components import pytorchjob, runtime
    from components.settings import kfp_config
    from reidflow.errors import ConfigError

    if not artifact_root.startswith("s3://"):
        raise ConfigError(
            "kfp.artifact_root: multi-node training needs s3://bucket/prefix "
            "(the PyTorchJob pods cannot see this task's local artifact directory)"
        )
    params = runtime.load_params_text(params_yaml, [*overrides, f"pretrain.model.backbone={backbone}"])
    cfg = kfp_config(params, source=runtime.PARAMS_SOURCE)
    sources, target = runtime.training_inputs(runtime.read_manifest(shards))
    uri = runtime.output_uri(model, artifact_root, run_id, task_name, item=backbone)
    inputs = [("source", s) for s in sources] + ([("target", target)] if target else [])
    cli_args = runtime.stage_cli_args("pretrain", pytorchjob.PARAMS_PATH, inputs, uri, task_name)
    env = {"REIDFLOW_RUN_ID": run_id, "REIDFLOW_ORCHESTRATOR": "kfp"}
    if runtime.run_context(run_id, task_name).image:
        env["REIDFLOW_IMAGE_DIGEST"] = str(runtime.run_context(run_id, task_name).image)
    if cfg.pushgateway_url:
        env["REIDFLOW_PUSHGATEWAY_URL"] = cfg.pushgateway_url
    manifest = pytorchjob.pytorchjob_manifest(
        name=pytorchjob.job_name("reidflow", run_id[:12], backbone),
        namespace=cfg.distributed.namespace,
        image=image,
        cli_args=cli_args,
        params_yaml=yaml.safe_dump(params, sort_keys=False),
        nodes=cfg.distributed.nodes,
        cfg=cfg,
        env=env,
    )
    pytorchjob.apply_and_wait(manifest, cfg.distributed.timeout_seconds)
    digest = runtime.publish(model, uri, backbone=backbone)
    return namedtuple("PretrainOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(pretrain_multinode, base_image=image, install_kfp_package=False)


component = build()
