"""KFP components of stage ``sda``: ``sda train`` (sources + target + encoder -> generator) and
``sda translate`` (generator + sources -> translated shards, plus a manifest for pretraining on them).

The translate task writes a shard manifest in which the translated shards replace the sources (role
``source``) and the target entries are passed through, so the ``pretrain`` component trains on the
translations unchanged. Every URI in it is an object-store URI (the translated shards' own, or the
ones the input manifest carried).
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
    shards_digest: str,
    generator: Output[Model],
    task_name: str,
) -> NamedTuple("SdaTrainOutputs", [("digest", str)]):
    """Learn the source -> target translation on the manifest's sources and its target.

    ``params_yaml`` holds the ``sda`` section. ``encoder``: a ``pretrain`` model on the raw sources with
    BN adapted to the target; it is both frozen encoders of the relation loss (unused with
    ``sda.loss.relation_weight: 0``). With ``gpus`` > 1 the stage runs under torchrun in this pod.
    ``shards_digest`` keys the cache.
    """
    from collections import namedtuple

    from components import runtime, sandbox, training
    from reidflow.config import section
    from reidflow.errors import ConfigError
    from reidflow.stages import sda as stage

    run_id = runtime.current_run_id(generator)
    with sandbox.pod(generator):
        params = runtime.load_params_text(params_yaml, overrides)
        cfg = section(params, "sda", stage.SDAConfig, source=runtime.PARAMS_SOURCE)
        sources, target = runtime.training_inputs(runtime.read_manifest(shards))
        if target is None:
            raise ConfigError("datasets: sda train needs a dataset with role 'target' (the style to learn)")
        encoder_uri = runtime.input_uri(encoder)
        uri = runtime.output_uri(generator, artifact_root, run_id, task_name)
        ctx = runtime.run_context(run_id, task_name)
        inputs = [("source", s) for s in sources] + [("target", target)]
        inputs += [("source_model", encoder_uri), ("target_model", encoder_uri)]
        digest = training.train_and_publish(
            stage="sda",
            cfg=cfg,
            params=params,
            output=uri,
            artifact=generator,
            run_id=run_id,
            task_name=task_name,
            train=lambda hooks, resume: stage.train(
                cfg,
                sources,
                target,
                uri,
                source_model=encoder_uri,
                target_model=encoder_uri,
                ctx=ctx,
                resume=resume,
                hooks=hooks,
            ),
            gpus=gpus,
            cli_inputs=inputs,
            mode="train",
        )
    return namedtuple("SdaTrainOutputs", ["digest"])(digest)


def sda_translate(
    params_yaml: str,
    overrides: list,
    shards: Input[Dataset],
    generator: Input[Model],
    artifact_root: str,
    generator_digest: str,
    translated: Output[Dataset],
    manifest: Output[Dataset],
    task_name: str,
) -> NamedTuple("SdaTranslateOutputs", [("digest", str)]):
    """Translate every source of the manifest; ``manifest`` lists the translated shards as the source
    and the original target (for BN adaptation and evaluation). ``params_yaml`` holds the ``sda``
    section; ``generator_digest`` keys the cache."""
    from collections import namedtuple

    from components import runtime, sandbox
    from reidflow.config import section
    from reidflow.obs import live as observe
    from reidflow.stages import sda as stage

    run_id = runtime.current_run_id(translated)
    with sandbox.pod(translated, manifest):
        params = runtime.load_params_text(params_yaml, overrides)
        cfg = section(params, "sda", stage.SDAConfig, source=runtime.PARAMS_SOURCE)
        entries = runtime.read_manifest(shards)
        sources, _ = runtime.training_inputs(entries)
        uri = runtime.output_uri(translated, artifact_root, run_id, task_name)
        with (
            runtime.private_s3_cache(),
            observe.observed("sda", runtime.metrics_instance(task_name), run_id),
        ):
            ctx = runtime.run_context(run_id, task_name)
            stage.translate(cfg, runtime.input_uri(generator), sources, uri, ctx)
        digest = runtime.publish(translated, uri, dataset="sda-translated", role="source")
        listed = [
            {
                "dataset": "sda-translated",
                "role": "source",
                "uri": runtime.store_uri(translated),
                "digest": digest,
            },
            *(e for e in entries if e.get("role") == "target"),
        ]
        runtime.write_manifest(manifest.path, listed)
        manifest.metadata.update(
            {"datasets": [e["dataset"] for e in listed], "digest": runtime.manifest_digest(listed)}
        )
    return namedtuple("SdaTranslateOutputs", ["digest"])(digest)


def build_train(image: str = IMAGE):
    return dsl.component(sda_train, base_image=image, install_kfp_package=False)


def build_translate(image: str = IMAGE):
    return dsl.component(sda_translate, base_image=image, install_kfp_package=False)


train_component = build_train()
translate_component = build_translate()
