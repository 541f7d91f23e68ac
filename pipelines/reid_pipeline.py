"""The reidflow pipeline: synth -> shard (ParallelFor over datasets) -> collect -> pretrain
(ParallelFor over backbones) and MetaBIN (when params.yaml has a ``metabin`` section) and SDA (with an
``sda`` section: an encoder pretrain -> sda train -> sda translate -> pretrain on the translations)
and MMT+ (with an ``mmt`` section: per backbone a second pretrain seed, then both nets adapted to the
target) -> evaluate (ensemble of all models, dsl.Collected fan-in).

The pipeline is built from params.yaml at compile time: parameter defaults (each task's params,
the backbones, the datasets, the artifact root) and cluster settings (image, resources) come from it.
The *structure* is fixed at compile time; the ``<task>_params`` may still be replaced when submitting.

Each task receives only the params sections it reads (:data:`TASK_SECTIONS`), as its own pipeline
parameter: editing ``evaluate.rerank.k1`` changes the evaluate task's inputs and nobody else's, so the
KFP cache keeps every other task. The task name reaches every task as a task argument (the backend
resolves placeholders only there); the run id comes from the pod's ``pipeline/runid`` label as an
environment variable, because as a task input it would make every task of every run a cache miss.
Needs a KFP backend >= 2.14 (``dsl.Collected``).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components import build_components
from components.image import resolve_image
from components.resources import apply_common, apply_shm, apply_training
from components.settings import (
    MIN_BACKEND_VERSION,
    KfpConfig,
    kfp_config,
    pipeline_backbones,
    pipeline_datasets,
)
from kfp import dsl, kubernetes

from reidflow.errors import ConfigError

ALL_STAGES = ("synth", "shard", "pretrain", "evaluate")

TASK_SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": ("synth",),
    "shard": ("shard", "datasets"),
    "pretrain": ("pretrain",),
    "camera": ("camera",),
    "metabin": ("metabin",),
    "sda": ("sda",),
    "mmt": ("mmt",),
    "evaluate": ("evaluate",),
    "visda": ("visda",),
}
"""The params sections each component reads, by pipeline parameter ``<key>_params`` (``pretrain``: every
pretrain task, the multi-node one too; ``sda``: sda-train and sda-translate; ``visda``: the VisDA
pipeline's report). Roles and dataset locations reach the training tasks through the shard manifest,
not through ``datasets``."""

TASK_NAME = dsl.PIPELINE_TASK_NAME_PLACEHOLDER


@dataclass(frozen=True)
class PipelinePlan:
    """Everything the pipeline needs from params.yaml, resolved and validated once."""

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

    def task_params(self, key: str) -> str:
        """The params of one task (its sections of :data:`TASK_SECTIONS`) as one line of JSON."""
        return _one_line({name: self.params[name] for name in TASK_SECTIONS[key] if name in self.params})

    @property
    def cluster_json(self) -> str:
        """The ``kfp:`` section, resolved (the multi-node task shapes its job from it)."""
        return _one_line(self.cfg.model_dump(mode="json"))


def _one_line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def plan_pipeline(params: dict[str, Any], source: str = "params.yaml") -> PipelinePlan:
    """Validate the ``kfp:`` section and resolve image, datasets and backbones.

    The components receive their params as one line of JSON (valid YAML): kfp 2.17 copies parameter
    defaults into the package's comment header, and a multi-line default breaks that YAML file.
    """
    cfg = kfp_config(params, source=source)
    return PipelinePlan(
        params=params,
        cfg=cfg,
        image=resolve_image(params),
        datasets=pipeline_datasets(params, cfg, source),
        backbones=pipeline_backbones(params, cfg, source),
        source=source,
    )


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
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
    stages = check_stages(stages)
    cfg, image = plan.cfg, plan.image
    comps = build_components(image)
    multinode = cfg.distributed.nodes > 1
    ids = {"task_name": TASK_NAME}  # resolved by the backend only as a task argument; stable across runs
    version = ".".join(map(str, MIN_BACKEND_VERSION))

    @dsl.pipeline(
        name=cfg.pipeline_name,
        description=(
            "reidflow: synthetic/real re-ID data -> shards -> pretrained backbones and MetaBIN -> "
            f"ensemble evaluation. Needs a Kubeflow Pipelines backend >= {version}."
        ),
    )
    def reid_pipeline(
        synth_params: str = plan.task_params("synth"),
        shard_params: str = plan.task_params("shard"),
        pretrain_params: str = plan.task_params("pretrain"),
        camera_params: str = plan.task_params("camera"),
        metabin_params: str = plan.task_params("metabin"),
        sda_params: str = plan.task_params("sda"),
        mmt_params: str = plan.task_params("mmt"),
        evaluate_params: str = plan.task_params("evaluate"),
        backbones: list = plan.backbones,
        artifact_root: str = cfg.artifact_root,
        datasets: list = plan.datasets,
        synth_root: str = cfg.synth_root,
        synth_overrides: list = [],  # noqa: B006 - KFP reads defaults, never mutates them
        shard_overrides: list = [],  # noqa: B006
        pretrain_overrides: list = [],  # noqa: B006
        metabin_overrides: list = [],  # noqa: B006
        camera_overrides: list = [],  # noqa: B006
        evaluate_overrides: list = [],  # noqa: B006
        sda_overrides: list = [],  # noqa: B006
        # the model pretrained on the translations is named apart from the raw one in the reports
        sda_pretrain_overrides: list = [f"pretrain.name={plan.sda_backbone}-sda"],  # noqa: B006
        # the second net of MMT+ per backbone: `pretrain` with another seed (pretrain_overrides do not apply)
        mmt_pretrain_overrides: list = ["pretrain.seed=1", "pretrain.engine.seed=1"],  # noqa: B006
        mmt_overrides: list = [],  # noqa: B006
    ) -> None:
        collect = data_tasks(
            plan,
            comps,
            stages,
            wire_loop_digests,
            synth_params=synth_params,
            synth_overrides=synth_overrides,
            shard_params=shard_params,
            shard_overrides=shard_overrides,
            datasets=datasets,
            artifact_root=artifact_root,
            synth_root=synth_root,
        )
        if collect is None or "pretrain" not in stages:
            return
        shards_digest = collect.outputs["digest"]
        with dsl.ParallelFor(backbones, name="backbones") as backbone:
            common: dict[str, Any] = {
                "params_yaml": pretrain_params,
                "overrides": pretrain_overrides,
                "backbone": backbone,
                "shards": collect.outputs["manifest"],
                "artifact_root": artifact_root,
                "shards_digest": shards_digest if wire_loop_digests else "",
                **ids,
            }
            if multinode:  # the task only launches the job; the job's pods get the GPUs
                pretrain = comps.pretrain_multinode(image=image, cluster=plan.cluster_json, **common)
                apply_common(pretrain, cfg, image)
                kubernetes.set_timeout(pretrain, cfg.distributed.timeout_seconds + 3600)
            else:
                pretrain = comps.pretrain(gpus=cfg.gpus, **common)
                apply_training(apply_common(pretrain, cfg, image), cfg)
            if plan.mmt:  # MMT+: a second seed of this backbone, then both nets adapted to the target
                second = comps.pretrain(gpus=cfg.gpus, **{**common, "overrides": mmt_pretrain_overrides})
                apply_training(apply_common(second.set_display_name("pretrain-seed1"), cfg, image), cfg)
                adapted = comps.mmt(
                    params_yaml=mmt_params,
                    overrides=mmt_overrides,
                    backbone=backbone,
                    shards=collect.outputs["manifest"],
                    model1=pretrain.outputs["model"],
                    model2=second.outputs["model"],
                    artifact_root=artifact_root,
                    gpus=cfg.gpus,
                    shards_digest=shards_digest if wire_loop_digests else "",
                    **ids,
                )
                apply_training(apply_common(adapted, cfg, image), cfg)
        extra: dict[str, Any] = {}
        if plan.metabin:
            meta = comps.metabin(
                params_yaml=metabin_params,
                overrides=metabin_overrides,
                shards=collect.outputs["manifest"],
                artifact_root=artifact_root,
                gpus=cfg.gpus,
                shards_digest=shards_digest,
                **ids,
            )
            apply_training(apply_common(meta, cfg, image), cfg)
            extra["metabin"] = meta.outputs["model"]
        if plan.sda:
            params = {"pretrain": pretrain_params, "sda": sda_params}
            overrides = {
                "pretrain": pretrain_overrides,
                "sda": sda_overrides,
                "on_sda": sda_pretrain_overrides,
            }
            extra["sda"] = _sda_chain(plan, comps, params, overrides, artifact_root, collect)
        if "evaluate" not in stages:
            return
        if plan.camera:  # the camera model of the camera-similarity correction (evaluate.camera.enabled)
            cam = comps.camera(
                params_yaml=camera_params,
                overrides=camera_overrides,
                shards=collect.outputs["manifest"],
                artifact_root=artifact_root,
                shards_digest=shards_digest,
                **ids,
            )
            apply_training(apply_common(cam, cfg, image), cfg)
            extra["camera"] = cam.outputs["model"]
        if plan.mmt:
            extra["mmt_models"] = dsl.Collected(adapted.outputs["model"])
        evaluate = comps.evaluate(
            params_yaml=evaluate_params,
            overrides=evaluate_overrides,
            shards=collect.outputs["manifest"],
            models=dsl.Collected(pretrain.outputs["model"]),
            artifact_root=artifact_root,
            shards_digest=shards_digest,
            model_digests=dsl.Collected(pretrain.outputs["digest"]),
            **ids,
            **extra,
        )
        apply_shm(apply_common(evaluate, cfg, image), cfg.shm_size)

    return reid_pipeline


def data_tasks(
    plan: PipelinePlan,
    comps: Any,
    stages: Sequence[str],
    wire_loop_digests: bool,
    *,
    synth_params: Any,
    synth_overrides: Any,
    shard_params: Any,
    shard_overrides: Any,
    datasets: Any,
    artifact_root: Any,
    synth_root: Any,
) -> Any:
    """synth -> shard (ParallelFor over ``datasets``) -> collect-shards, the head of every pipeline
    (the keyword arguments are the pipeline's parameters); returns the collect task, or None when
    ``stages`` stop at synth. ``wire_loop_digests``: see :func:`build_pipeline`."""
    cfg, image = plan.cfg, plan.image
    ids = {"task_name": TASK_NAME}
    synth = comps.synth(
        params_yaml=synth_params, overrides=synth_overrides, artifact_root=artifact_root, **ids
    )
    apply_common(synth, cfg, image)
    if "shard" not in stages:
        return None
    with dsl.ParallelFor(datasets, name="datasets") as dataset:
        shard = comps.shard(
            params_yaml=shard_params,
            overrides=shard_overrides,
            dataset=dataset,
            raw=synth.outputs["raw"],
            artifact_root=artifact_root,
            synth_root=synth_root,
            raw_digest=synth.outputs["digest"] if wire_loop_digests else "",
            **ids,
        )
        apply_common(shard, cfg, image)
    collect = comps.collect(
        shards=dsl.Collected(shard.outputs["shards"]),
        shard_digests=dsl.Collected(shard.outputs["digest"]),
    )
    apply_common(collect, cfg, image)
    return collect


def _sda_chain(
    plan: PipelinePlan,
    comps: Any,
    params: dict[str, Any],
    overrides: dict[str, Any],
    artifact_root: Any,
    collect: Any,
) -> Any:
    """:func:`sda_translation` (encoder: the ``pretrain`` section's backbone) -> pretrain on the
    translated sources; returns that model (it joins the ensemble).

    Both pretrain tasks run in one pod (torchrun over ``kfp.gpus``) even with ``kfp.distributed.nodes``
    > 1; ``overrides["on_sda"]`` (not the pretrain overrides) applies to the model on the translations.
    """
    cfg, image = plan.cfg, plan.image
    ids = {"task_name": TASK_NAME}
    chain_overrides = {"encoder": overrides["pretrain"], "sda": overrides["sda"]}
    translate = sda_translation(
        plan, comps, params, chain_overrides, artifact_root, collect, plan.sda_backbone
    )
    model = comps.pretrain(
        params_yaml=params["pretrain"],
        overrides=overrides["on_sda"],
        backbone=plan.sda_backbone,
        shards=translate.outputs["manifest"],
        artifact_root=artifact_root,
        gpus=cfg.gpus,
        shards_digest=translate.outputs["digest"],
        **ids,
    ).set_display_name("pretrain-sda")
    apply_training(apply_common(model, cfg, image), cfg)
    return model.outputs["model"]


def sda_translation(
    plan: PipelinePlan,
    comps: Any,
    params: dict[str, Any],
    overrides: dict[str, Any],
    artifact_root: Any,
    collect: Any,
    encoder_backbone: Any,
) -> Any:
    """pretrain ``encoder_backbone`` (raw sources, BN adapted to the target: both frozen encoders) ->
    sda train -> sda translate; returns the translate task (``manifest``: the translated sources and
    the target, ``digest``: the translations' content digest).

    The encoder is its own task: a task outside the backbone loop cannot pick one iteration's output.
    ``params``: the ``pretrain`` and ``sda`` task params; ``overrides``: ``encoder`` and ``sda``.
    """
    cfg, image = plan.cfg, plan.image
    ids = {"task_name": TASK_NAME}
    shards_digest = collect.outputs["digest"]
    encoder = comps.pretrain(
        params_yaml=params["pretrain"],
        overrides=overrides["encoder"],
        backbone=encoder_backbone,
        shards=collect.outputs["manifest"],
        artifact_root=artifact_root,
        gpus=cfg.gpus,
        shards_digest=shards_digest,
        **ids,
    ).set_display_name("sda-encoder")
    apply_training(apply_common(encoder, cfg, image), cfg)
    train = comps.sda_train(
        params_yaml=params["sda"],
        overrides=overrides["sda"],
        shards=collect.outputs["manifest"],
        encoder=encoder.outputs["model"],
        artifact_root=artifact_root,
        gpus=cfg.gpus,
        shards_digest=shards_digest,
        **ids,
    )
    apply_training(apply_common(train, cfg, image), cfg)
    translate = comps.sda_translate(
        params_yaml=params["sda"],
        overrides=overrides["sda"],
        shards=collect.outputs["manifest"],
        generator=train.outputs["generator"],
        artifact_root=artifact_root,
        generator_digest=train.outputs["digest"],
        **ids,
    )
    apply_training(apply_common(translate, cfg, image), cfg)  # generator inference: a GPU helps
    return translate
