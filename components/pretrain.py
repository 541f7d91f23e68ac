"""KFP component of stage ``pretrain``: source shards (+ unlabeled target) -> one trained model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


def pretrain(
    params_yaml: str,
    overrides: list,
    backbone: str,
    shards: Input[Dataset],
    artifact_root: str,
    gpus: int,
    params_digest: str,
    shards_digest: str,
    model: Output[Model],
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_name: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
) -> NamedTuple("PretrainOutputs", [("digest", str)]):
    """Train ``backbone`` on the manifest's source datasets (BN adapted on its target, if any).

    With ``gpus`` > 1 the stage runs under torchrun in this pod, one process per GPU (the CLI then
    pushes the metrics). Otherwise it runs in-process and pushes them to REIDFLOW_PUSHGATEWAY_URL.
    ``params_digest`` and ``shards_digest`` only key the cache.
    """
    from collections import namedtuple

    from components import runtime
    from reidflow.config import section
    from reidflow.stages import pretrain

    params = runtime.load_params_text(params_yaml, [*overrides, f"pretrain.model.backbone={backbone}"])
    cfg = section(params, "pretrain", pretrain.PretrainConfig, source=runtime.PARAMS_SOURCE)
    sources, target = runtime.training_inputs(runtime.read_manifest(shards))
    uri = runtime.output_uri(model, artifact_root, run_id, task_name, item=backbone)
    if gpus > 1:
        inputs = [("source", s) for s in sources] + ([("target", target)] if target else [])
        runtime.run_torchrun("pretrain", gpus, params, inputs, uri, run_id, task_name)
    else:
        from reidflow.obs.train_hook import PrometheusHook

        with (
            runtime.private_s3_cache(),
            runtime.observed("pretrain", runtime.metrics_instance(task_name, backbone)) as stage_metrics,
        ):
            pretrain.run(
                cfg,
                sources,
                target,
                uri,
                runtime.run_context(run_id, task_name),
                hooks=(PrometheusHook(stage_metrics),),
            )
    digest = runtime.publish(model, uri, backbone=backbone)
    return namedtuple("PretrainOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(pretrain, base_image=image, install_kfp_package=False)


component = build()
