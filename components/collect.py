"""KFP component gathering the sharded datasets into one manifest (fan-in of the dataset loop).

KFP cannot feed a ``dsl.Collected`` list into a task inside another ParallelFor (the backbone loop);
the manifest (dataset, role, object-store URI, digest per shard artifact) is the single artifact that
loop reads. Its URIs are where the shard artifacts live in the object store (never a path in the
shard task's pod), so a task that declares only the manifest can still read every shard.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


def collect_shards(
    shards: Input[list[Dataset]],
    shard_digests: list,
    manifest: Output[Dataset],
) -> NamedTuple("CollectOutputs", [("digest", str)]):
    """Write manifest.json; the returned digest covers every shard's dataset, role and content digest.

    ``shard_digests`` (the shards' content digests) keys the cache.
    """
    from collections import namedtuple

    from components import runtime, sandbox

    with sandbox.pod(manifest):
        entries = [
            {
                "dataset": s.metadata.get("dataset"),
                "role": s.metadata.get("role"),
                "uri": runtime.store_uri(s),
                "digest": s.metadata.get("digest"),
            }
            for s in shards
        ]
        runtime.write_manifest(manifest.path, entries)
        combined = runtime.manifest_digest(entries)
        manifest.metadata.update({"datasets": [e["dataset"] for e in entries], "digest": combined})
    return namedtuple("CollectOutputs", ["digest"])(combined)


def build(image: str = IMAGE):
    return dsl.component(collect_shards, base_image=image, install_kfp_package=False)


component = build()
