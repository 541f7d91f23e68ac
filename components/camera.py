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
    shards_digest: str,
    model: Output[Model],
    task_name: str,
) -> NamedTuple("CameraOutputs", [("digest", str)]):
    """Train the camera classifier on the manifest's target dataset (``params_yaml``: the ``camera``
    section; ``shards_digest`` keys the cache)."""
    from collections import namedtuple

    from components import runtime, sandbox, training
    from reidflow.config import section
    from reidflow.errors import ConfigError
    from reidflow.stages import pretrain

    run_id = runtime.current_run_id(model)
    with sandbox.pod(model):
        params = runtime.load_params_text(params_yaml, overrides)
        cfg = section(params, "camera", pretrain.PretrainConfig, source=runtime.PARAMS_SOURCE)
        _, target = runtime.training_inputs(runtime.read_manifest(shards))
        if target is None:
            raise ConfigError("camera model: no dataset with role 'target' among the sharded datasets")
        uri = runtime.output_uri(model, artifact_root, run_id, task_name)
        ctx = runtime.run_context(run_id, task_name)
        digest = training.train_and_publish(
            stage="camera",
            cfg=cfg,
            params=params,
            output=uri,
            artifact=model,
            run_id=run_id,
            task_name=task_name,
            train=lambda hooks, resume: pretrain.run(
                cfg, [target], None, uri, ctx, resume=resume, hooks=hooks
            ),
        )
    return namedtuple("CameraOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(camera, base_image=image, install_kfp_package=False)


component = build()
