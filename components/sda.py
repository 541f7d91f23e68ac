"""KFP components of stage ``sda``: ``sda train`` (sources + target + encoder -> generator) and
``sda translate`` (generator + sources -> translated shards, plus a manifest for pretraining on them).

The translate task writes a shard manifest in which the translated shards replace the sources (role
``source``) and the target entries are passed through, so the ``pretrain`` component trains on the
translations unchanged.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


def sda_train(
    params_yaml: str,
    overrides: list,
    shards: Input[Dataset],
    encoder: Input[Model],
    artifact_root: str,
    gpus: int,
    params_digest: str,
    shards_digest: str,
    generator: Output[Model],
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_name: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
) -> NamedTuple("SdaTrainOutputs", [("digest", str)]):
    """Learn the source -> target translation on the manifest's sources and its target.

    ``encoder``: a ``pretrain`` model on the raw sources with BN adapted to the target; it is both
    frozen encoders of the relation loss (unused with ``sda.loss.relation_weight: 0``). With ``gpus``
    > 1 the stage runs under torchrun in this pod. ``params_digest``/``shards_digest`` key the cache.
    """
    from collections import namedtuple

    from components import runtime
    from reidflow.config import section
    from reidflow.errors import ConfigError
    from reidflow.stages import sda as stage

    params = runtime.load_params_text(params_yaml, overrides)
    cfg = section(params, "sda", stage.SDAConfig, source=runtime.PARAMS_SOURCE)
    sources, target = runtime.training_inputs(runtime.read_manifest(shards))
    if target is None:
        raise ConfigError("datasets: sda train needs a dataset with role 'target' (the style to learn)")
    encoder_uri = runtime.input_uri(encoder)
    uri = runtime.output_uri(generator, artifact_root, run_id, task_name)
    if gpus > 1:
        inputs = [("source", s) for s in sources] + [("target", target)]
        inputs += [("source_model", encoder_uri), ("target_model", encoder_uri)]
        runtime.run_torchrun("sda", gpus, params, inputs, uri, run_id, task_name, mode="train")
    else:
        from reidflow.obs.train_hook import PrometheusHook

        with (
            runtime.private_s3_cache(),
            runtime.observed("sda", runtime.metrics_instance(task_name)) as stage_metrics,
        ):
            stage.train(
                cfg,
                sources,
                target,
                uri,
                source_model=encoder_uri,
                target_model=encoder_uri,
                ctx=runtime.run_context(run_id, task_name),
                hooks=(PrometheusHook(stage_metrics),),
            )
    digest = runtime.publish(generator, uri)
    return namedtuple("SdaTrainOutputs", ["digest"])(digest)


def sda_translate(
    params_yaml: str,
    overrides: list,
    shards: Input[Dataset],
    generator: Input[Model],
    artifact_root: str,
    params_digest: str,
    generator_digest: str,
    translated: Output[Dataset],
    manifest: Output[Dataset],
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_name: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
) -> NamedTuple("SdaTranslateOutputs", [("digest", str)]):
    """Translate every source of the manifest; ``manifest`` lists the translated shards as the source
    and the original target (for BN adaptation and evaluation). ``generator_digest`` keys the cache."""
    import hashlib
    from collections import namedtuple

    from components import runtime
    from reidflow.config import section
    from reidflow.stages import sda as stage

    params = runtime.load_params_text(params_yaml, overrides)
    cfg = section(params, "sda", stage.SDAConfig, source=runtime.PARAMS_SOURCE)
    entries = runtime.read_manifest(shards)
    sources, _ = runtime.training_inputs(entries)
    uri = runtime.output_uri(translated, artifact_root, run_id, task_name)
    with (
        runtime.private_s3_cache(),
        runtime.observed("sda", runtime.metrics_instance(task_name)),
    ):
        stage.translate(
            cfg, runtime.input_uri(generator), sources, uri, runtime.run_context(run_id, task_name)
        )
    digest = runtime.publish(translated, uri, dataset="sda-translated", role="source")
    listed = [
        {"dataset": "sda-translated", "role": "source", "uri": uri, "digest": digest},
        *(e for e in entries if e.get("role") == "target"),
    ]
    runtime.write_manifest(manifest.path, listed)
    joined = "\n".join(sorted(str(e["digest"]) for e in listed))
    manifest.metadata.update(
        {
            "datasets": [e["dataset"] for e in listed],
            "digest": "sha256:" + hashlib.sha256(joined.encode()).hexdigest(),
        }
    )
    return namedtuple("SdaTranslateOutputs", ["digest"])(digest)


def build_train(image: str = IMAGE):
    return dsl.component(sda_train, base_image=image, install_kfp_package=False)


def build_translate(image: str = IMAGE):
    return dsl.component(sda_translate, base_image=image, install_kfp_package=False)


train_component = build_train()
translate_component = build_translate()
