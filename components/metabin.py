"""KFP component of stage ``metabin``: every source dataset -> one MetaBIN domain-generalized model.

The target/eval datasets are only evaluated at the end (quick same-/cross-domain metrics); MetaBIN
never reads them during training.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


def metabin(
    params_yaml: str,
    overrides: list,
    shards: Input[Dataset],
    artifact_root: str,
    gpus: int,
    shards_digest: str,
    model: Output[Model],
    task_name: str,
) -> NamedTuple("MetabinOutputs", [("digest", str)]):
    """Train the ``metabin`` section's model (``params_yaml``) on the manifest's sources (torchrun when
    ``gpus`` > 1). ``shards_digest`` only keys the cache."""
    from collections import namedtuple

    from components import runtime, sandbox, training
    from reidflow.config import section
    from reidflow.stages import metabin as stage

    run_id = runtime.current_run_id(model)
    with sandbox.pod(model):
        params = runtime.load_params_text(params_yaml, overrides)
        cfg = section(params, "metabin", stage.MetabinConfig, source=runtime.PARAMS_SOURCE)
        manifest = runtime.read_manifest(shards)
        sources, _ = runtime.training_inputs(manifest)
        unseen = runtime.evaluation_sets(manifest)
        uri = runtime.output_uri(model, artifact_root, run_id, task_name)
        ctx = runtime.run_context(run_id, task_name)
        digest = training.train_and_publish(
            stage="metabin",
            cfg=cfg,
            params=params,
            output=uri,
            artifact=model,
            run_id=run_id,
            task_name=task_name,
            train=lambda hooks, resume: stage.run(cfg, sources, unseen, uri, ctx, resume=resume, hooks=hooks),
            gpus=gpus,
            cli_inputs=[("source", s) for s in sources] + [("target", t) for t in unseen],
        )
    return namedtuple("MetabinOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(metabin, base_image=image, install_kfp_package=False)


component = build()
