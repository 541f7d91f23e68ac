"""KFP component of stage ``evaluate``: ensemble of every pretrained model on the evaluation sets."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


def evaluate(
    params_yaml: str,
    overrides: list,
    shards: Input[Dataset],
    models: Input[list[Model]],
    artifact_root: str,
    shards_digest: str,
    model_digests: list,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report_html: Output[HTML],
    report_md: Output[Markdown],
    task_name: str,
    camera: Input[Model] = None,
    metabin: Input[Model] = None,
    sda: Input[Model] = None,
    mmt_models: Input[list[Model]] = None,
) -> NamedTuple("EvaluateOutputs", [("digest", str)]):
    """Evaluate the models (and their ensemble) on the manifest's eval/target datasets.

    ``params_yaml`` holds the ``evaluate`` section. ``evaluation`` is the full artifact (lineage.json,
    metrics.json, reports, figures); the metrics and the reports are also exposed as KFP's typed
    outputs so the UI shows them. ``camera`` is the camera model (present when
    ``evaluate.camera.enabled``); ``metabin`` the MetaBIN model, evaluated and ensembled with the others
    (present when params.yaml has a ``metabin`` section); ``sda`` the model pretrained on SDA-translated
    sources, likewise (present with an ``sda`` section); ``mmt_models`` the MMT+-adapted model of
    every backbone (present with an ``mmt`` section).
    """
    import json
    from collections import namedtuple

    from components import runtime, sandbox
    from reidflow.config import section
    from reidflow.obs import live as observe
    from reidflow.stages import evaluate

    run_id = runtime.current_run_id(evaluation)
    with sandbox.pod(evaluation, report_html, report_md):
        params = runtime.load_params_text(params_yaml, overrides)
        cfg = section(params, "evaluate", evaluate.EvaluateConfig, source=runtime.PARAMS_SOURCE)
        eval_sets = runtime.evaluation_sets(runtime.read_manifest(shards))
        model_uris = [runtime.input_uri(m) for m in models]
        if metabin is not None:
            model_uris.append(runtime.input_uri(metabin))
        if sda is not None:
            model_uris.append(runtime.input_uri(sda))
        model_uris += [runtime.input_uri(m) for m in mmt_models or []]
        uri = runtime.output_uri(evaluation, artifact_root, run_id, task_name)
        with (
            runtime.private_s3_cache(),
            observe.observed("evaluate", runtime.metrics_instance(task_name), run_id) as stage_metrics,
        ):
            evaluate.run(
                cfg,
                model_uris,
                eval_sets,
                uri,
                runtime.run_context(run_id, task_name),
                camera_model=runtime.input_uri(camera) if camera is not None else None,
                observer=stage_metrics,
            )
        digest = runtime.publish(evaluation, uri)

        local = runtime.local_copy(uri)
        scores = json.loads((local / "metrics.json").read_text())
        headline = runtime.numeric_leaves(scores.get("summary", scores))
        for name, value in headline.items():
            metrics.log_metric(name, value)
        with open(report_html.path, "w", encoding="utf-8") as out:  # self-contained: images are data URIs
            out.write((local / "report.html").read_text(encoding="utf-8"))
        with open(report_md.path, "w", encoding="utf-8") as out:
            out.write((local / "report.md").read_text(encoding="utf-8"))
    return namedtuple("EvaluateOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(evaluate, base_image=image, install_kfp_package=False)


component = build()
