"""KFP component gathering the sharded datasets into one manifest (fan-in of the dataset loop).

KFP cannot feed a ``dsl.Collected`` list into a task inside another ParallelFor (the backbone loop);
the manifest (dataset, role, URI, digest per shard artifact) is the single artifact that loop reads.
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
    """Write manifest.json; the returned digest covers every shard artifact's content digest."""
    import hashlib
    from collections import namedtuple

    from components import runtime

    entries = [
        {
            "dataset": s.metadata.get("dataset"),
            "role": s.metadata.get("role"),
            "uri": runtime.input_uri(s),
            "digest": s.metadata.get("digest"),
        }
        for s in shards
    ]
    runtime.write_manifest(manifest.path, entries)
    combined = (
        "sha256:" + hashlib.sha256("\n".join(sorted(str(d) for d in shard_digests)).encode()).hexdigest()
    )
    manifest.metadata.update({"datasets": [e["dataset"] for e in entries], "digest": combined})
    return namedtuple("CollectOutputs", ["digest"])(combined)


def build(image: str = IMAGE):
    return dsl.component(collect_shards, base_image=image, install_kfp_package=False)


component = build()
