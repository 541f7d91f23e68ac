"""Compile the pipeline to YAML, run it locally with kfp.local, or submit it to a KFP server."""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.reid_pipeline import ALL_STAGES, PipelinePlan, build_pipeline, plan_pipeline
from reidflow.config import load_params
from reidflow.errors import ConfigError, ReidflowError
from reidflow.store.lineage import LINEAGE_FILE


def load_plan(params_path: str | Path, overrides: Sequence[str] = ()) -> PipelinePlan:
    """Read params.yaml (+ ``key=value`` overrides) into a validated pipeline plan."""
    return plan_pipeline(load_params(params_path, list(overrides)), source=str(params_path))


def compile_pipeline(params_path: str | Path, out_yaml: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Compile the pipeline built from ``params_path`` to a KFP v2 YAML package at ``out_yaml``."""
    from kfp import compiler

    out = Path(out_yaml)
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{out}: the pipeline package must be a .yaml file")
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(load_plan(params_path, overrides)), package_path=str(out))
    return out


@dataclass
class LocalRun:
    """Where a local run put its artifacts: every reidflow artifact by task, and the report/metrics."""

    run_dir: Path
    artifacts: dict[str, list[Path]] = field(default_factory=dict)
    report: Path | None = None
    metrics: Path | None = None


def run_local(
    params_path: str | Path,
    pipeline_root: str | Path,
    overrides: Sequence[str] = (),
    stages: Sequence[str] = ALL_STAGES,
) -> LocalRun:
    """Run the pipeline on this machine with kfp.local's subprocess runner (CPU; cluster settings ignored).

    Components run in this Python environment (reidflow and the ``components`` package must be
    importable). With ``kfp.artifact_root: s3://…`` the stages write to S3 (credentials and endpoint
    from the AWS_* environment) and the local KFP artifacts are pointers. Returns the run's local
    artifacts; ``report``/``metrics`` are set when ``evaluate`` ran and wrote locally.
    """
    import kfp.local

    # kfp.local honours retry policies (with their backoff): a failing local task should fail at once.
    plan = load_plan(params_path, [*overrides, "kfp.retry.num_retries=0"])
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    pipeline = build_pipeline(plan, stages=stages, wire_loop_digests=False)
    try:
        pipeline()
    except RuntimeError as exc:  # kfp.local's way of reporting a failed task
        raise ReidflowError(f"local pipeline run failed: {exc}") from exc
    new_runs = sorted(
        (p for p in set(root.iterdir()) - before if p.is_dir()), key=lambda p: p.stat().st_mtime
    )
    if not new_runs:
        raise ReidflowError(f"{root}: the local run left no run directory")
    return collect_local_run(new_runs[-1])


def collect_local_run(run_dir: Path) -> LocalRun:
    """Find every reidflow artifact (a directory with lineage.json) of a local run, keyed by stage."""
    result = LocalRun(run_dir=run_dir)
    for lineage in sorted(run_dir.rglob(LINEAGE_FILE)):
        stage = json.loads(lineage.read_text()).get("stage") or "unknown"
        result.artifacts.setdefault(str(stage), []).append(lineage.parent)
    evaluations = [p for p in result.artifacts.get("evaluate", []) if (p / "report.html").is_file()]
    if evaluations:
        result.report = evaluations[0] / "report.html"
        result.metrics = evaluations[0] / "metrics.json"
    return result


def submit(
    package: str | Path,
    host: str,
    experiment: str | None = None,
    namespace: str | None = None,
    arguments: dict[str, Any] | None = None,
    run_name: str | None = None,
    enable_caching: bool | None = None,
) -> str:
    """Submit a compiled package to the KFP API at ``host``; returns the run id."""
    import kfp

    package = Path(package)
    if not package.is_file():
        raise ConfigError(f"{package}: pipeline package not found (run `reidflow pipeline compile` first)")
    if not host.startswith(("http://", "https://")):
        raise ConfigError(
            f"--host {host!r}: expected the KFP API URL, e.g. https://kubeflow.example.com/pipeline"
        )
    client = kfp.Client(host=host, namespace=namespace)
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments or {},
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        enable_caching=enable_caching,
    )
    return str(result.run_id)
