"""KFP component of ``reidflow visda-report``: every model of the VisDA chain -> the ablation report.

The fan-in of the VisDA pipeline (pipelines/visda_pipeline.py): per role the ``dsl.Collected`` models of
the backbone loop (``raw1``/``raw2``: pretrain on the raw sources at the first/second seed, ``sda1``/
``sda2``: on the translations, ``mmt``, ``mmt_plus``), the camera model, and the target's shards
(from the manifest, by ``visda.target``).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


def visda_report(
    params_yaml: str,
    overrides: list,
    shards: Input[Dataset],
    raw1: Input[list[Model]],
    raw2: Input[list[Model]],
    sda1: Input[list[Model]],
    sda2: Input[list[Model]],
    mmt: Input[list[Model]],
    mmt_plus: Input[list[Model]],
    artifact_root: str,
    shards_digest: str,
    raw1_digests: list,
    raw2_digests: list,
    sda1_digests: list,
    sda2_digests: list,
    mmt_digests: list,
    mmt_plus_digests: list,
    report: Output[Artifact],
    metrics: Output[Metrics],
    report_html: Output[HTML],
    report_md: Output[Markdown],
    task_name: str,
    camera: Input[Model] = None,
) -> NamedTuple("VisdaReportOutputs", [("digest", str)]):
    """Score every model of the chain on the target's query/gallery and tabulate the VisDA ablations.

    ``params_yaml`` holds the ``visda`` section. ``report`` is the full artifact (lineage.json,
    metrics.json, reports, figure); the ensemble's scores per post-processing step and the best single
    model's are also KFP metrics, and the reports KFP's HTML/Markdown outputs. ``camera``: the camera
    model of the camera correction (the ``+ camera`` step is left out without it). ``shards_digest``
    and the ``*_digests`` (the models' content digests) key the cache.
    """
    import json
    import re
    from collections import namedtuple

    from components import runtime, sandbox
    from reidflow.config import section
    from reidflow.errors import ConfigError
    from reidflow.obs import live as observe
    from reidflow.stages import visda as stage

    run_id = runtime.current_run_id(report)
    with sandbox.pod(report, report_html, report_md):
        params = runtime.load_params_text(params_yaml, overrides)
        cfg = section(params, "visda", stage.VisdaConfig, source=runtime.PARAMS_SOURCE)
        entries = runtime.read_manifest(shards)
        targets = [e["uri"] for e in entries if e.get("dataset") == cfg.target]
        if len(targets) != 1:
            raise ConfigError(
                f"visda.target: {cfg.target!r} is not among the sharded datasets "
                f"{[e.get('dataset') for e in entries]}"
            )
        roles = {
            "raw": [runtime.input_uri(m) for m in [*raw1, *raw2]],
            "sda": [runtime.input_uri(m) for m in [*sda1, *sda2]],
            "mmt": [runtime.input_uri(m) for m in mmt],
            "mmt_plus": [runtime.input_uri(m) for m in mmt_plus],
        }
        uri = runtime.output_uri(report, artifact_root, run_id, task_name)
        with (
            runtime.private_s3_cache(),
            observe.observed("visda_report", runtime.metrics_instance(task_name), run_id),
        ):
            stage.run(
                cfg,
                roles,
                targets[0],
                uri,
                camera=runtime.input_uri(camera) if camera is not None else None,
                ctx=runtime.run_context(run_id, task_name),
            )
        digest = runtime.publish(report, uri)

        local = runtime.local_copy(uri)
        scores = json.loads((local / "metrics.json").read_text())["scores"]
        for step in scores["ensemble"]["steps"]:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", step["step"]).strip("_")
            for name in ("mAP", "rank1", "mINP"):
                metrics.log_metric(f"ensemble.{slug}.{name}", float(step[name]))
        for name, value in scores["best_single"]["plain"].items():
            metrics.log_metric(f"best_single.{name}", float(value))
        with open(report_html.path, "w", encoding="utf-8") as out:
            out.write((local / "report.html").read_text(encoding="utf-8"))
        with open(report_md.path, "w", encoding="utf-8") as out:
            out.write((local / "report.md").read_text(encoding="utf-8"))
    return namedtuple("VisdaReportOutputs", ["digest"])(digest)


def build(image: str = IMAGE):
    return dsl.component(visda_report, base_image=image, install_kfp_package=False)


component = build()
