"""KFP component of stage ``mmt``: two pretrained models of one backbone + the shards -> the adapted model.

The manifest's sources are MMT+'s labelled half (unused in ``mmt.method.mode: mmt``); its target is the
unlabelled set the pseudo labels come from (its identities only score the pseudo labels).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


def mmt(
    params_yaml: str,
    overrides: list,
    backbone: str,
    shards: Input[Dataset],
    model1: Input[Model],
    model2: Input[Model],
    artifact_root: str,
    gpus: int,
    shards_digest: str,
    model: Output[Model],
    task_name: str,
) -> NamedTuple("MmtOutputs", [("digest", str)]):
    """Adapt ``model1`` and ``model2`` (two ``pretrain`` seeds of ``backbone``) to the manifest's target.

    ``params_yaml`` holds the ``mmt`` section. With ``gpus`` > 1 the stage runs under torchrun in this
    pod (the result does not depend on the number of processes: docs/methods/mmt.md).
    ``shards_digest`` keys the cache.
    """
    from collections import namedtuple

    from components import runtime, sandbox, training
    from reidflow.config import section
    from reidflow.errors import ConfigError
    from reidflow.stages import mmt as stage

    run_id = runtime.current_run_id(model)
    with sandbox.pod(model):
        params = runtime.load_params_text(params_yaml, [f"mmt.name={backbone}-mmt", *overrides])
        cfg = section(params, "mmt", stage.MMTStageConfig, source=runtime.PARAMS_SOURCE)
        sources, target = runtime.training_inputs(runtime.read_manifest(shards))
        if target is None:
            raise ConfigError(
                "datasets: mmt needs a dataset with role 'target' (the unlabelled set to adapt to)"
            )
        models = [runtime.input_uri(model1), runtime.input_uri(model2)]
        uri = runtime.output_uri(model, artifact_root, run_id, task_name, item=backbone)
        ctx = runtime.run_context(run_id, task_name)
        inputs = [("model", m) for m in models] + [("source", s) for s in sources] + [("target", target)]
        digest = training.train_and_publish(
            stage="mmt",
            cfg=cfg,
            params=params,
            output=uri,
            artifact=model,
            run_id=run_id,
            task_name=task_name,
            train=lambda hooks, resume: stage.run(
                cfg, models, sources, target, uri, ctx, resume=resume, hooks=hooks
            ),
            gpus=gpus,
            cli_inputs=inputs,
            item=backbone,
            extra={"backbone": backbone},
        )
    return namedtuple("MmtOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(mmt, base_image=image, install_kfp_package=False)


component = build()
