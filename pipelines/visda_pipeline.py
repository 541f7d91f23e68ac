"""The VisDA-2020 chain as a Kubeflow pipeline (the DVC version: pipelines/visda/dvc.yaml; docs/visda.md).

synth -> shard (ParallelFor over datasets) -> collect -> SDA once (encoder: the raw pretrain of
``visda.sda_encoder`` at ``visda.seeds[0]`` -> sda train -> sda translate) -> ParallelFor over
``visda.backbones``: pretrain on the raw sources x 2 seeds, pretrain on the translations x 2 seeds, MMT
and MMT+ (``mmt.method.mode``) from the two SDA nets -> camera model -> one ``visda-report`` over every
model (``dsl.Collected`` per role).

Built from params.yaml at compile time like the main pipeline (:mod:`pipelines.reid_pipeline`, whose
plan, per-task params, data tasks and SDA tasks it shares): every task gets only its params sections
(the report: ``visda``), the task name as a task argument, content digests as cache keys, and every
training task GPUs (``kfp:``). Seeds, names and MMT modes are the DVC stages' ``--set`` overrides,
built per backbone by a small ``visda-overrides`` task (components/visda_overrides.py says why).
Needs a KFP backend >= 2.14 (``dsl.Collected``).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components import build_components
from components.image import resolve_image
from components.resources import apply_common, apply_shm, apply_training
from components.settings import MIN_BACKEND_VERSION, kfp_config, pipeline_datasets
from kfp import dsl

from pipelines.reid_pipeline import (
    ALL_STAGES,
    TASK_NAME,
    PipelinePlan,
    check_stages,
    data_tasks,
    sda_translation,
)
from reidflow.config import section
from reidflow.errors import ConfigError

DEFAULT_NAME = "reidflow-visda"
"""The pipeline's name unless ``kfp.pipeline_name`` is set."""


@dataclass(frozen=True)
class VisdaPlan(PipelinePlan):
    """:class:`PipelinePlan` + the validated ``visda`` section; ``backbones`` are ``visda.backbones``."""

    visda: Any = None  # reidflow.stages.visda.VisdaConfig

    @property
    def camera_model(self) -> bool:
        """Train the camera model of the report's camera correction (params have a ``camera`` section)."""
        return "camera" in self.params

    @property
    def pipeline_name(self) -> str:
        return self.cfg.pipeline_name if "pipeline_name" in (self.params.get("kfp") or {}) else DEFAULT_NAME


def plan_visda_pipeline(params: dict[str, Any], source: str = "params.yaml") -> VisdaPlan:
    """Validate the ``kfp:`` and ``visda:`` sections; the datasets must give the chain one source
    (``visda.source``) and one target (``visda.target``), as the DVC chain's ``--input``s do."""
    from reidflow.stages.visda import VisdaConfig

    cfg = kfp_config(params, source=source)
    visda = section(params, "visda", VisdaConfig, source=source)
    if cfg.backbones and list(cfg.backbones) != visda.backbones:
        raise ConfigError(
            f"{source}: kfp.backbones {cfg.backbones} differs from visda.backbones {visda.backbones}; "
            "the VisDA pipeline fans out over visda.backbones (drop kfp.backbones)"
        )
    datasets = pipeline_datasets(params, cfg, source)
    roles = {name: str((params["datasets"][name] or {}).get("role", "source")) for name in datasets}
    for role, wanted in (("source", visda.source), ("target", visda.target)):
        chosen = [name for name in datasets if roles[name] == role]
        if chosen != [wanted]:
            raise ConfigError(
                f"{source}: the sharded datasets with role {role!r} are {chosen}; the VisDA chain trains on "
                f"visda.{role} {wanted!r} alone (set its role, or list the datasets in kfp.datasets)"
            )
    for section_name in ("pretrain", "sda", "mmt"):
        if section_name not in params:
            raise ConfigError(f"{source}: the VisDA pipeline needs a {section_name!r} section")
    return VisdaPlan(
        params=params,
        cfg=cfg,
        image=resolve_image(params),
        datasets=datasets,
        backbones=list(visda.backbones),
        source=source,
        visda=visda,
    )


def build_visda_pipeline(
    plan: VisdaPlan, stages: Sequence[str] = ALL_STAGES, wire_loop_digests: bool = True
) -> Any:
    """The ``visda_pipeline`` graph component for ``plan``, running ``stages`` (a prefix of ALL_STAGES:
    ``pretrain`` ends after the backbone loop, ``evaluate`` adds the camera model and the report).

    ``wire_loop_digests``: as in :func:`pipelines.reid_pipeline.build_pipeline` (off for local runs).
    """
    stages = check_stages(stages)
    cfg, image, visda = plan.cfg, plan.image, plan.visda
    comps = build_components(image)
    ids = {"task_name": TASK_NAME}
    seeds = [int(s) for s in visda.seeds]
    version = ".".join(map(str, MIN_BACKEND_VERSION))

    @dsl.pipeline(
        name=plan.pipeline_name,
        description=(
            "reidflow VisDA-2020 chain: SDA once -> per backbone pretrain x 2 seeds on the raw sources and "
            "on the translations -> MMT and MMT+ -> camera model -> ablation report. Needs a Kubeflow "
            f"Pipelines backend >= {version}."
        ),
    )
    def visda_pipeline(
        synth_params: str = plan.task_params("synth"),
        shard_params: str = plan.task_params("shard"),
        pretrain_params: str = plan.task_params("pretrain"),
        sda_params: str = plan.task_params("sda"),
        mmt_params: str = plan.task_params("mmt"),
        camera_params: str = plan.task_params("camera"),
        visda_params: str = plan.task_params("visda"),
        backbones: list = plan.backbones,
        artifact_root: str = cfg.artifact_root,
        datasets: list = plan.datasets,
        synth_root: str = cfg.synth_root,
        synth_overrides: list = [],  # noqa: B006 - KFP reads defaults, never mutates them
        shard_overrides: list = [],  # noqa: B006
        # every pretrain task (the SDA encoder too); seed and name are set per task after them
        pretrain_overrides: list = [],  # noqa: B006
        sda_overrides: list = [],  # noqa: B006
        # MMT and MMT+ alike; method.mode and name are set per task after them
        mmt_overrides: list = [],  # noqa: B006
        camera_overrides: list = [],  # noqa: B006
        report_overrides: list = [],  # noqa: B006
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
        manifest, shards_digest = collect.outputs["manifest"], collect.outputs["digest"]

        def named(backbone: Any) -> Any:
            task = comps.visda_overrides(
                backbone=backbone,
                seeds=seeds,
                pretrain_overrides=pretrain_overrides,
                mmt_overrides=mmt_overrides,
            )
            return apply_common(task, cfg, image)

        # SDA once; its encoders are the raw seeds[0] net of visda.sda_encoder, trained as in the loop
        encoder_names = named(visda.sda_encoder).set_display_name("sda-encoder-overrides")
        translate = sda_translation(
            plan,
            comps,
            {"pretrain": pretrain_params, "sda": sda_params},
            {"encoder": encoder_names.outputs["raw1"], "sda": sda_overrides},
            artifact_root,
            collect,
            visda.sda_encoder,
        )
        with dsl.ParallelFor(backbones, name="backbones") as backbone:
            names = named(backbone).set_display_name("visda-overrides")

            def pretrain(key: str, shards: Any, digest: Any, display: str) -> Any:
                task = comps.pretrain(
                    params_yaml=pretrain_params,
                    overrides=names.outputs[key],
                    backbone=backbone,
                    shards=shards,
                    artifact_root=artifact_root,
                    gpus=cfg.gpus,
                    shards_digest=digest if wire_loop_digests else "",
                    **ids,
                ).set_display_name(display)
                return apply_training(apply_common(task, cfg, image), cfg)

            raw = [
                pretrain(f"raw{i}", manifest, shards_digest, f"pretrain-raw-seed{seed}")
                for i, seed in enumerate(seeds, 1)
            ]
            on_sda = [
                pretrain(
                    f"sda{i}",
                    translate.outputs["manifest"],
                    translate.outputs["digest"],
                    f"pretrain-sda-seed{seed}",
                )
                for i, seed in enumerate(seeds, 1)
            ]
            adapted = {}
            for key, display in (("mmt", "mmt"), ("mmt_plus", "mmt-plus")):
                task = comps.mmt(
                    params_yaml=mmt_params,
                    overrides=names.outputs[key],
                    backbone=backbone,
                    shards=manifest,
                    model1=on_sda[0].outputs["model"],
                    model2=on_sda[1].outputs["model"],
                    artifact_root=artifact_root,
                    gpus=cfg.gpus,
                    shards_digest=shards_digest if wire_loop_digests else "",
                    **ids,
                ).set_display_name(display)
                adapted[key] = apply_training(apply_common(task, cfg, image), cfg)
        if "evaluate" not in stages:
            return
        extra: dict[str, Any] = {}
        if plan.camera_model:
            cam = comps.camera(
                params_yaml=camera_params,
                overrides=camera_overrides,
                shards=manifest,
                artifact_root=artifact_root,
                shards_digest=shards_digest,
                **ids,
            )
            apply_training(apply_common(cam, cfg, image), cfg)
            extra["camera"] = cam.outputs["model"]
        roles = {"raw1": raw[0], "raw2": raw[1], "sda1": on_sda[0], "sda2": on_sda[1], **adapted}
        for role, task in roles.items():
            extra[role] = dsl.Collected(task.outputs["model"])
            extra[f"{role}_digests"] = dsl.Collected(task.outputs["digest"])
        report = comps.visda_report(
            params_yaml=visda_params,
            overrides=report_overrides,
            shards=manifest,
            artifact_root=artifact_root,
            shards_digest=shards_digest,
            **ids,
            **extra,
        )
        apply_shm(apply_common(report, cfg, image), cfg.shm_size)

    return visda_pipeline
