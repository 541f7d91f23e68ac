"""The reidflow pipeline: synth -> shard (ParallelFor over datasets) -> collect -> pretrain
(ParallelFor over backbones) and MetaBIN (when params.yaml has a ``metabin`` section) and SDA (with an
``sda`` section: an encoder pretrain -> sda train -> sda translate -> pretrain on the translations)
and MMT+ (with an ``mmt`` section: per backbone a second pretrain seed, then both nets adapted to the
target) -> evaluate (ensemble of all models, dsl.Collected fan-in).

The pipeline is built from params.yaml at compile time: parameter defaults (the params text, the
backbones, the datasets, the artifact root) and cluster settings (image, resources) come from it.
The *structure* is fixed at compile time; ``params_yaml`` may still be replaced when submitting.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components import build_components
from components.image import resolve_image
from components.resources import apply_common, apply_shm, apply_training
from components.settings import KfpConfig, kfp_config, pipeline_backbones, pipeline_datasets
from kfp import dsl

from reidflow.errors import ConfigError

ALL_STAGES = ("synth", "shard", "pretrain", "evaluate")


@dataclass(frozen=True)
class PipelinePlan:
    """Everything the pipeline needs from params.yaml, resolved and validated once."""

    params_text: str
    params: dict[str, Any]
    cfg: KfpConfig
    image: str
    datasets: list[str]
    backbones: list[str]
    source: str = "params.yaml"

    @property
    def camera(self) -> bool:
        """Train the camera model for the evaluation's camera-similarity correction."""
        return bool(((self.params.get("evaluate") or {}).get("camera") or {}).get("enabled"))

    @property
    def metabin(self) -> bool:
        """Train the MetaBIN model (params.yaml has a ``metabin`` section) beside the pretrained ones."""
        return "metabin" in self.params

    @property
    def sda(self) -> bool:
        """Translate the sources with SDA and pretrain on the translations (params.yaml has ``sda``)."""
        return "sda" in self.params

    @property
    def mmt(self) -> bool:
        """Adapt every backbone's two pretrain seeds to the target with MMT+ (params.yaml has ``mmt``)."""
        return "mmt" in self.params

    @property
    def sda_backbone(self) -> str:
        """Backbone of the SDA chain's encoder and of the model pretrained on the translations: the
        ``pretrain`` section's (the dvc.yaml chain uses pretrain@osnet_x0_25, the same by default)."""
        model = (self.params.get("pretrain") or {}).get("model") or {}
        return str(model.get("backbone") or self.backbones[0])

    @property
    def params_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.params_text.encode()).hexdigest()


def plan_pipeline(params: dict[str, Any], source: str = "params.yaml") -> PipelinePlan:
    """Validate the ``kfp:`` section and resolve image, datasets and backbones.

    The components receive the params as one line of JSON (valid YAML): kfp 2.17 copies parameter
    defaults into the package's comment header, and a multi-line default breaks that YAML file.
    """
    cfg = kfp_config(params, source=source)
    text = json.dumps(params, separators=(",", ":"), default=str)
    return PipelinePlan(
        params_text=text,
        params=params,
        cfg=cfg,
        image=resolve_image(params),
        datasets=pipeline_datasets(params, cfg, source),
        backbones=pipeline_backbones(params, cfg, source),
        source=source,
    )


def _check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    stages = tuple(stages)
    if not stages or stages != ALL_STAGES[: len(stages)]:
        raise ConfigError(f"stages {list(stages)}: expected a prefix of {list(ALL_STAGES)}")
    return stages


def build_pipeline(plan: PipelinePlan, stages: Sequence[str] = ALL_STAGES, wire_loop_digests: bool = True):
    """The ``reid_pipeline`` graph component for ``plan``, running ``stages`` (a prefix of ALL_STAGES).

    ``wire_loop_digests``: pass upstream content digests into the tasks inside the ParallelFor loops
    (cache keys). kfp 2.17's local runner replaces every upstream output parameter of a loop task by
    the loop item, so local runs switch it off; those tasks still read the digests from their inputs.
    """
    stages = _check_stages(stages)
    cfg, image = plan.cfg, plan.image
    comps = build_components(image)
    multinode = cfg.distributed.nodes > 1

    @dsl.pipeline(
        name=cfg.pipeline_name,
        description=(
            "reidflow: synthetic/real re-ID data -> shards -> pretrained backbones and MetaBIN -> "
            "ensemble evaluation"
        ),
    )
    def reid_pipeline(
        params_yaml: str = plan.params_text,
        backbones: list = plan.backbones,
        artifact_root: str = cfg.artifact_root,
        datasets: list = plan.datasets,
        synth_root: str = cfg.synth_root,
        params_digest: str = plan.params_digest,
        synth_overrides: list = [],  # noqa: B006 - KFP reads defaults, never mutates them
        shard_overrides: list = [],  # noqa: B006
        pretrain_overrides: list = [],  # noqa: B006
        metabin_overrides: list = [],  # noqa: B006
        evaluate_overrides: list = [],  # noqa: B006
        sda_overrides: list = [],  # noqa: B006
        # the model pretrained on the translations is named apart from the raw one in the reports
        sda_pretrain_overrides: list = [f"pretrain.name={plan.sda_backbone}-sda"],  # noqa: B006
        # the second net of MMT+ per backbone: `pretrain` with another seed (pretrain_overrides do not apply)
        mmt_pretrain_overrides: list = ["pretrain.seed=1", "pretrain.engine.seed=1"],  # noqa: B006
        mmt_overrides: list = [],  # noqa: B006
    ) -> None:
        synth = comps.synth(
            params_yaml=params_yaml,
            overrides=synth_overrides,
            artifact_root=artifact_root,
            params_digest=params_digest,
        )
        apply_common(synth, cfg, image)
        if "shard" not in stages:
            return
        with dsl.ParallelFor(datasets, name="datasets") as dataset:
            shard = comps.shard(
                params_yaml=params_yaml,
                overrides=shard_overrides,
                dataset=dataset,
                raw=synth.outputs["raw"],
                artifact_root=artifact_root,
                synth_root=synth_root,
                params_digest=params_digest,
                raw_digest=synth.outputs["digest"] if wire_loop_digests else "",
            )
            apply_common(shard, cfg, image)
        collect = comps.collect(
            shards=dsl.Collected(shard.outputs["shards"]),
            shard_digests=dsl.Collected(shard.outputs["digest"]),
        )
        apply_common(collect, cfg, image)
        if "pretrain" not in stages:
            return
        shards_digest = collect.outputs["digest"]
        with dsl.ParallelFor(backbones, name="backbones") as backbone:
            common: dict[str, Any] = {
                "params_yaml": params_yaml,
                "overrides": pretrain_overrides,
                "backbone": backbone,
                "shards": collect.outputs["manifest"],
                "artifact_root": artifact_root,
                "params_digest": params_digest,
                "shards_digest": shards_digest if wire_loop_digests else "",
            }
            if multinode:  # the task only launches a PyTorchJob; the job's pods get the GPUs
                pretrain = comps.pretrain_multinode(image=image, **common)
                apply_common(pretrain, cfg, image)
            else:
                pretrain = comps.pretrain(gpus=cfg.gpus, **common)
                apply_training(apply_common(pretrain, cfg, image), cfg)
            if plan.mmt:  # MMT+: a second seed of this backbone, then both nets adapted to the target
                second = comps.pretrain(gpus=cfg.gpus, **{**common, "overrides": mmt_pretrain_overrides})
                apply_training(apply_common(second.set_display_name("pretrain-seed1"), cfg, image), cfg)
                adapted = comps.mmt(
                    params_yaml=params_yaml,
                    overrides=mmt_overrides,
                    backbone=backbone,
                    shards=collect.outputs["manifest"],
                    model1=pretrain.outputs["model"],
                    model2=second.outputs["model"],
                    artifact_root=artifact_root,
                    gpus=cfg.gpus,
                    params_digest=params_digest,
                    shards_digest=shards_digest if wire_loop_digests else "",
                )
                apply_training(apply_common(adapted, cfg, image), cfg)
        extra: dict[str, Any] = {}
        if plan.metabin:
            meta = comps.metabin(
                params_yaml=params_yaml,
                overrides=metabin_overrides,
                shards=collect.outputs["manifest"],
                artifact_root=artifact_root,
                gpus=cfg.gpus,
                params_digest=params_digest,
                shards_digest=shards_digest,
            )
            apply_training(apply_common(meta, cfg, image), cfg)
            extra["metabin"] = meta.outputs["model"]
        if plan.sda:
            overrides = (pretrain_overrides, sda_overrides, sda_pretrain_overrides)
            extra["sda"] = _sda_chain(
                plan, comps, params_yaml, artifact_root, params_digest, collect, *overrides
            )
        if "evaluate" not in stages:
            return
        if plan.camera:  # the camera model of the camera-similarity correction (evaluate.camera.enabled)
            cam = comps.camera(
                params_yaml=params_yaml,
                overrides=pretrain_overrides,
                shards=collect.outputs["manifest"],
                artifact_root=artifact_root,
                params_digest=params_digest,
                shards_digest=shards_digest,
            )
            apply_training(apply_common(cam, cfg, image), cfg)
            extra["camera"] = cam.outputs["model"]
        if plan.mmt:
            extra["mmt_models"] = dsl.Collected(adapted.outputs["model"])
        evaluate = comps.evaluate(
            params_yaml=params_yaml,
            overrides=evaluate_overrides,
            shards=collect.outputs["manifest"],
            models=dsl.Collected(pretrain.outputs["model"]),
            artifact_root=artifact_root,
            params_digest=params_digest,
            shards_digest=shards_digest,
            model_digests=dsl.Collected(pretrain.outputs["digest"]),
            **extra,
        )
        apply_shm(apply_common(evaluate, cfg, image), cfg.shm_size)

    return reid_pipeline


def _sda_chain(
    plan: PipelinePlan,
    comps: Any,
    params_yaml: Any,
    artifact_root: Any,
    params_digest: Any,
    collect: Any,
    pretrain_overrides: Any,
    sda_overrides: Any,
    sda_pretrain_overrides: Any,
) -> Any:
    """pretrain (raw sources, BN adapted to the target: both frozen encoders) -> sda train -> sda
    translate -> pretrain on the translated sources; returns the last model (it joins the ensemble).

    The encoder is its own task: a task outside the backbone loop cannot pick one iteration's output.
    Both pretrain tasks run in one pod (torchrun over ``kfp.gpus``) even with ``kfp.distributed.nodes``
    > 1; ``sda_pretrain_overrides`` (not ``pretrain_overrides``) applies to the model on the translations.
    """
    cfg, image = plan.cfg, plan.image
    shards_digest = collect.outputs["digest"]
    encoder = comps.pretrain(
        params_yaml=params_yaml,
        overrides=pretrain_overrides,
        backbone=plan.sda_backbone,
        shards=collect.outputs["manifest"],
        artifact_root=artifact_root,
        gpus=cfg.gpus,
        params_digest=params_digest,
        shards_digest=shards_digest,
    ).set_display_name("sda-encoder")
    apply_training(apply_common(encoder, cfg, image), cfg)
    train = comps.sda_train(
        params_yaml=params_yaml,
        overrides=sda_overrides,
        shards=collect.outputs["manifest"],
        encoder=encoder.outputs["model"],
        artifact_root=artifact_root,
        gpus=cfg.gpus,
        params_digest=params_digest,
        shards_digest=shards_digest,
    )
    apply_training(apply_common(train, cfg, image), cfg)
    translate = comps.sda_translate(
        params_yaml=params_yaml,
        overrides=sda_overrides,
        shards=collect.outputs["manifest"],
        generator=train.outputs["generator"],
        artifact_root=artifact_root,
        params_digest=params_digest,
        generator_digest=train.outputs["digest"],
    )
    apply_training(apply_common(translate, cfg, image), cfg)  # generator inference: a GPU helps
    model = comps.pretrain(
        params_yaml=params_yaml,
        overrides=sda_pretrain_overrides,
        backbone=plan.sda_backbone,
        shards=translate.outputs["manifest"],
        artifact_root=artifact_root,
        gpus=cfg.gpus,
        params_digest=params_digest,
        shards_digest=translate.outputs["digest"],
    ).set_display_name("pretrain-sda")
    apply_training(apply_common(model, cfg, image), cfg)
    return model.outputs["model"]
