"""KFP component of stage ``synth``: procedural multi-domain pedestrians -> one raw-dataset artifact."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


def synth(
    params_yaml: str,
    overrides: list,
    artifact_root: str,
    params_digest: str,
    raw: Output[Dataset],
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_name: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
) -> NamedTuple("SynthOutputs", [("digest", str)]):
    """Generate every domain of params ``synth``; ``params_digest`` only keys the cache."""
    from collections import namedtuple

    from components import runtime
    from reidflow.config import section
    from reidflow.stages import synth

    params = runtime.load_params_text(params_yaml, overrides)
    cfg = section(params, "synth", synth.SynthConfig, source=runtime.PARAMS_SOURCE)
    uri = runtime.output_uri(raw, artifact_root, run_id, task_name)
    with runtime.observed("synth", runtime.metrics_instance(task_name)):
        synth.run(cfg, uri, runtime.run_context(run_id, task_name))
    return namedtuple("SynthOutputs", ["digest"])(runtime.publish(raw, uri))


def build(image: str = IMAGE):
    return dsl.component(synth, base_image=image, install_kfp_package=False)


component = build()
