"""Kubeflow Pipelines v2 components: one per reidflow stage, each a thin call of the stage's ``run()``.

Components are lightweight Python components (``@dsl.component``, no kfp install step) whose body
imports reidflow from the image; :func:`build_components` binds them all to one image reference.

Component bodies import :mod:`components.runtime`, :mod:`components.settings`,
:mod:`components.pytorchjob`, :mod:`components.sandbox`, :mod:`reidflow.obs.live`,
:mod:`components.checkpoints` and :mod:`components.training` at run time, where kfp's executor loads
only part of ``kfp.dsl``: those modules (and this file) must not build components on import (nor
import kfp).
"""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageComponents:
    synth: Any
    shard: Any
    collect: Any
    pretrain: Any
    pretrain_multinode: Any
    evaluate: Any
    camera: Any
    metabin: Any
    sda_train: Any
    sda_translate: Any
    mmt: Any
    visda_overrides: Any
    visda_report: Any


def build_components(image: str | None = None) -> StageComponents:
    """Every component, running in ``image`` (default: :func:`components.image.resolve_image`)."""
    from components import (
        camera,
        collect,
        evaluate,
        metabin,
        mmt,
        pretrain,
        pretrain_multinode,
        sda,
        shard,
        synth,
        visda_overrides,
        visda_report,
    )
    from components.image import resolve_image

    image = image or resolve_image()
    return StageComponents(
        synth=synth.build(image),
        shard=shard.build(image),
        collect=collect.build(image),
        pretrain=pretrain.build(image),
        pretrain_multinode=pretrain_multinode.build(image),
        evaluate=evaluate.build(image),
        camera=camera.build(image),
        metabin=metabin.build(image),
        sda_train=sda.build_train(image),
        sda_translate=sda.build_translate(image),
        mmt=mmt.build(image),
        visda_overrides=visda_overrides.build(image),
        visda_report=visda_report.build(image),
    )


__all__ = ["StageComponents", "build_components"]
