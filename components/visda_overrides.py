"""KFP component naming one backbone's training tasks in the VisDA pipeline (pipelines/visda_pipeline.py).

The DVC chain (pipelines/visda/dvc.yaml) sets each task's seed, name and MMT mode with ``--set``; the
names carry the backbone (``<backbone>-raw-seed0``, ``<backbone>-mmt-plus``) so the report can tell
the models apart. Inside a ParallelFor the backbone is a loop item, and an f-string of it is not safe
on a cluster: the compiler writes it as a ``{{$.inputs.parameters[...]}}`` placeholder inside the task's
input, which the backend's launcher substitutes in its command line in map order, after or before the
executor input that holds it, so the component sometimes gets the literal placeholder
(kubeflow/pipelines#11035; kfp.local resolves it, which hides the problem). So this small task builds
the override lists and the training tasks take them as inputs: plain task outputs, which every
runner resolves.
"""

from typing import NamedTuple

from kfp import dsl

from components.image import IMAGE


def visda_overrides(
    backbone: str,
    seeds: list,
    pretrain_overrides: list,
    mmt_overrides: list,
) -> NamedTuple(
    "VisdaOverrides",
    [("raw1", list), ("raw2", list), ("sda1", list), ("sda2", list), ("mmt", list), ("mmt_plus", list)],
):
    """The ``overrides`` of ``backbone``'s tasks: pretrain on the raw sources and on the translations
    at each of the two ``seeds``, MMT and MMT+ (``mmt.method.mode``). The user's ``pretrain_overrides``
    / ``mmt_overrides`` come first; seed, name and mode define the chain and are applied last."""
    from collections import namedtuple

    if len(seeds) != 2:
        raise ValueError(f"seeds: {seeds}; expected the two pretrain seeds (visda.seeds)")
    first, second = (int(s) for s in seeds)  # KFP passes list numbers as floats

    def pretrain(kind: str, seed: int) -> list:
        return [
            *pretrain_overrides,
            f"pretrain.seed={seed}",
            f"pretrain.engine.seed={seed}",
            f"pretrain.name={backbone}-{kind}-seed{seed}",
        ]

    def mmt(mode: str, name: str) -> list:
        return [*mmt_overrides, f"mmt.method.mode={mode}", f"mmt.name={backbone}-{name}"]

    outputs = namedtuple("VisdaOverrides", ["raw1", "raw2", "sda1", "sda2", "mmt", "mmt_plus"])
    return outputs(
        pretrain("raw", first),
        pretrain("raw", second),
        pretrain("sda", first),
        pretrain("sda", second),
        mmt("mmt", "mmt"),
        mmt("mmt+", "mmt-plus"),
    )


def build(image: str = IMAGE):
    return dsl.component(visda_overrides, base_image=image, install_kfp_package=False)


component = build()
