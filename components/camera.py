"""KFP component of the camera model: `pretrain` with the ``camera`` section (labels = target cameras).

Its features give the evaluation's camera-similarity correction d - λ·d_cam (the VisDA recipe); it
trains on the adaptation target's unlabelled train split (camera ids only, no identities).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


def camera(
    params_yaml: str,
    overrides: list,
    shards: Input[Dataset],
    artifact_root: str,
    params_digest: str,
    shards_digest: str,
    model: Output[Model],
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_name: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
) -> NamedTuple("CameraOutputs", [("digest", str)]):
    """Train the camera classifier on the manifest's target dataset (``params_digest``/``shards_digest`` key the cache)."""
    from collections import namedtuple

    from components import runtime
    from reidflow.config import section
    from reidflow.errors import ConfigError
    from reidflow.obs.train_hook import PrometheusHook
    from reidflow.stages import pretrain

    params = runtime.load_params_text(params_yaml, overrides)
    cfg = section(params, "camera", pretrain.PretrainConfig, source=runtime.PARAMS_SOURCE)
    _, target = runtime.training_inputs(runtime.read_manifest(shards))
    if target is None:
        raise ConfigError("camera model: no dataset with role 'target' among the sharded datasets")
    uri = runtime.output_uri(model, artifact_root, run_id, task_name)
    with (
        runtime.private_s3_cache(),
        runtime.observed("camera", runtime.metrics_instance(task_name)) as stage_metrics,
    ):
        pretrain.run(
            cfg,
            [target],
            None,
            uri,
            runtime.run_context(run_id, task_name),
            hooks=(PrometheusHook(stage_metrics),),
        )
    digest = runtime.publish(model, uri)
    return namedtuple("CameraOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(camera, base_image=image, install_kfp_package=False)


component = build()
