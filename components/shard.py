"""KFP component of stage ``shard``: one dataset -> WebDataset shards + parquet index + card."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


def shard(
    params_yaml: str,
    overrides: list,
    dataset: str,
    raw: Input[Dataset],
    artifact_root: str,
    synth_root: str,
    raw_digest: str,
    shards: Output[Dataset],
    task_name: str,
) -> NamedTuple("ShardOutputs", [("digest", str)]):
    """Shard ``dataset``; its raw folder is inside the synth artifact when its root is under ``synth_root``.

    ``params_yaml`` holds the ``shard`` and ``datasets`` sections; ``raw_digest`` (the synth artifact's
    content digest) only keys the cache.
    """
    from collections import namedtuple

    from components import runtime, sandbox
    from reidflow.config import section
    from reidflow.obs import live as observe
    from reidflow.stages import shard

    run_id = runtime.current_run_id(shards)
    with sandbox.pod(shards):
        params = runtime.load_params_text(params_yaml, overrides)
        cfg = section(params, "shard", shard.ShardConfig, source=runtime.PARAMS_SOURCE)
        src = shard.dataset_source(params, dataset, source=runtime.PARAMS_SOURCE)
        raw_uri = runtime.shard_raw_uri(params, dataset, runtime.input_uri(raw), synth_root)
        uri = runtime.output_uri(shards, artifact_root, run_id, task_name, item=dataset)
        with observe.observed("shard", runtime.metrics_instance(task_name, dataset), run_id):
            ctx = runtime.run_context(run_id, task_name)
            shard.run(cfg, dataset, src, uri, raw_uri=raw_uri, ctx=ctx)
        digest = runtime.publish(shards, uri, dataset=dataset, role=src.role)
    return namedtuple("ShardOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(shard, base_image=image, install_kfp_package=False)


component = build()
