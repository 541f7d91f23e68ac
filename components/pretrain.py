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
    shards_digest: str,
    model: Output[Model],
    task_name: str,
) -> NamedTuple("PretrainOutputs", [("digest", str)]):
    """Train ``backbone`` on the manifest's source datasets (BN adapted on its target, if any).

    ``params_yaml`` holds the ``pretrain`` section. With ``gpus`` > 1 the stage runs under torchrun in
    this pod, one process per GPU. Checkpoints are kept in the artifact store, so a retried task
    resumes (components.training). ``shards_digest`` only keys the cache.
    """
    from collections import namedtuple

    from components import runtime, sandbox, training
    from reidflow.config import section
    from reidflow.stages import pretrain

    run_id = runtime.current_run_id(model)
    with sandbox.pod(model):
        params = runtime.load_params_text(params_yaml, [*overrides, f"pretrain.model.backbone={backbone}"])
        cfg = section(params, "pretrain", pretrain.PretrainConfig, source=runtime.PARAMS_SOURCE)
        sources, target = runtime.training_inputs(runtime.read_manifest(shards))
        uri = runtime.output_uri(model, artifact_root, run_id, task_name, item=backbone)
        ctx = runtime.run_context(run_id, task_name)
        digest = training.train_and_publish(
            stage="pretrain",
            cfg=cfg,
            params=params,
            output=uri,
            artifact=model,
            run_id=run_id,
            task_name=task_name,
            train=lambda hooks, resume: pretrain.run(
                cfg, sources, target, uri, ctx, resume=resume, hooks=hooks
            ),
            gpus=gpus,
            cli_inputs=[("source", s) for s in sources] + ([("target", target)] if target else []),
            item=backbone,
            extra={"backbone": backbone},
        )
    return namedtuple("PretrainOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(pretrain, base_image=image, install_kfp_package=False)


component = build()
