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
    params_digest: str,
    shards_digest: str,
    model: Output[Model],
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_name: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
) -> NamedTuple("MetabinOutputs", [("digest", str)]):
    """Train the ``metabin`` section's model on the manifest's sources (torchrun when ``gpus`` > 1).

    ``params_digest`` and ``shards_digest`` only key the cache.
    """
    from collections import namedtuple

    from components import runtime
    from reidflow.config import section
    from reidflow.stages import metabin as stage

    params = runtime.load_params_text(params_yaml, overrides)
    cfg = section(params, "metabin", stage.MetabinConfig, source=runtime.PARAMS_SOURCE)
    manifest = runtime.read_manifest(shards)
    sources, _ = runtime.training_inputs(manifest)
    unseen = runtime.evaluation_sets(manifest)
    uri = runtime.output_uri(model, artifact_root, run_id, task_name)
    if gpus > 1:
        inputs = [("source", s) for s in sources] + [("target", t) for t in unseen]
        runtime.run_torchrun("metabin", gpus, params, inputs, uri, run_id, task_name)
    else:
        from reidflow.obs.train_hook import PrometheusHook

        with (
            runtime.private_s3_cache(),
            runtime.observed("metabin", runtime.metrics_instance(task_name)) as stage_metrics,
        ):
            stage.run(
                cfg,
                sources,
                unseen,
                uri,
                runtime.run_context(run_id, task_name),
                hooks=(PrometheusHook(stage_metrics),),
            )
    digest = runtime.publish(model, uri)
    return namedtuple("MetabinOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(metabin, base_image=image, install_kfp_package=False)


component = build()
