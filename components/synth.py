"""KFP component of stage ``synth``: procedural multi-domain pedestrians -> one raw-dataset artifact."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


def synth(
    params_yaml: str,
    overrides: list,
    artifact_root: str,
    raw: Output[Dataset],
    task_name: str,
) -> NamedTuple("SynthOutputs", [("digest", str)]):
    """Generate every domain of params ``synth`` (``params_yaml`` holds that section only)."""
    from collections import namedtuple

    from components import runtime, sandbox
    from reidflow.config import section
    from reidflow.obs import live as observe
    from reidflow.stages import synth

    run_id = runtime.current_run_id(raw)
    with sandbox.pod(raw):
        params = runtime.load_params_text(params_yaml, overrides)
        cfg = section(params, "synth", synth.SynthConfig, source=runtime.PARAMS_SOURCE)
        uri = runtime.output_uri(raw, artifact_root, run_id, task_name)
        with observe.observed("synth", runtime.metrics_instance(task_name), run_id):
            synth.run(cfg, uri, runtime.run_context(run_id, task_name))
        digest = runtime.publish(raw, uri)
    return namedtuple("SynthOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(synth, base_image=image, install_kfp_package=False)


component = build()
