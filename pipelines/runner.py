"""Compile a pipeline to YAML, run it locally with kfp.local, or submit it to a KFP server.

Two pipelines: ``reid`` (pipelines/reid_pipeline.py, from params.yaml) and ``visda`` (the VisDA-2020
chain, pipelines/visda_pipeline.py, from pipelines/visda/params.yaml).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.reid_pipeline import ALL_STAGES, PipelinePlan, build_pipeline, plan_pipeline
from reidflow.config import load_params
from reidflow.errors import ConfigError, ReidflowError
from reidflow.store.lineage import LINEAGE_FILE

PIPELINES = ("reid", "visda")
"""The pipelines ``reidflow pipeline --pipeline`` chooses from (the first is the default)."""

DEFAULT_PARAMS = {"reid": Path("params.yaml"), "visda": Path("pipelines/visda/params.yaml")}


def check_pipeline(pipeline: str) -> str:
    if pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline {pipeline!r}: expected one of {list(PIPELINES)}")
    return pipeline


def load_plan(params_path: str | Path, overrides: Sequence[str] = (), pipeline: str = "reid") -> PipelinePlan:
    """Read params.yaml (+ ``key=value`` overrides) into a validated plan of ``pipeline``."""
    params = load_params(params_path, list(overrides))
    if check_pipeline(pipeline) == "visda":
        from pipelines.visda_pipeline import plan_visda_pipeline

        return plan_visda_pipeline(params, source=str(params_path))
    return plan_pipeline(params, source=str(params_path))


def build_graph(
    plan: PipelinePlan, stages: Sequence[str] = ALL_STAGES, wire_loop_digests: bool = True
) -> Any:
    """The graph component of ``plan``'s pipeline (a VisdaPlan builds the VisDA chain)."""
    from pipelines.visda_pipeline import VisdaPlan, build_visda_pipeline

    if isinstance(plan, VisdaPlan):
        return build_visda_pipeline(plan, stages=stages, wire_loop_digests=wire_loop_digests)
    return build_pipeline(plan, stages=stages, wire_loop_digests=wire_loop_digests)


def compile_pipeline(
    params_path: str | Path, out_yaml: str | Path, overrides: Sequence[str] = (), pipeline: str = "reid"
) -> Path:
    """Compile ``pipeline`` built from ``params_path`` to a KFP v2 YAML package at ``out_yaml``."""
    from kfp import compiler

    out = Path(out_yaml)
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{out}: the pipeline package must be a .yaml file")
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_graph(load_plan(params_path, overrides, pipeline)), package_path=str(out)
    )
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
    isolated: bool = False,
    pipeline: str = "reid",
) -> LocalRun:
    """Run ``pipeline`` on this machine with kfp.local's subprocess runner (CPU; GPU and Kubernetes
    settings ignored).

    Components run in this Python environment (reidflow and the ``components`` package must be
    importable). With ``kfp.artifact_root: s3://…`` the stages write to S3 (credentials and endpoint
    from the AWS_* environment) and the local KFP artifacts are pointers. ``isolated``: every task runs
    as if in its own pod (components.sandbox): a fresh working directory, private TMPDIR and caches,
    outputs written to pod-local paths that vanish after the task, so a path leaking from one task to
    another fails the run as it would on a cluster. Returns the run's local artifacts;
    ``report``/``metrics`` are set when ``evaluate`` (the VisDA pipeline: its report) ran and wrote
    locally.
    """
    import os
    import uuid

    import kfp.local
    from components.runtime import RUN_ID_ENV
    from components.sandbox import ISOLATE_ENV

    # kfp.local honours retry policies (with their backoff): a failing local task should fail at once.
    plan = load_plan(params_path, [*overrides, "kfp.retry.num_retries=0"], pipeline)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    graph = build_graph(plan, stages=stages, wire_loop_digests=False)
    # the task subprocesses inherit both; on a cluster the run id comes from the pod's label
    settings = {ISOLATE_ENV: "1" if isolated else "0", RUN_ID_ENV: f"local-{uuid.uuid4().hex[:12]}"}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        graph()
    except RuntimeError as exc:  # kfp.local's way of reporting a failed task
        raise ReidflowError(f"local pipeline run failed: {exc}") from exc
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
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
    evaluations = [
        p
        for stage in ("evaluate", "visda-report")
        for p in result.artifacts.get(stage, [])
        if (p / "report.html").is_file()
    ]
    if evaluations:
        result.report = evaluations[0] / "report.html"
        result.metrics = evaluations[0] / "metrics.json"
    return result


@dataclass(frozen=True)
class Auth:
    """How ``submit`` authenticates to a multi-user Kubeflow (the options kfp.Client supports).

    ``token``: a bearer token (e.g. ``kubectl create token``); ``cookies``: an existing session cookie
    string (``authservice_session=…`` from a browser login through Dex/oauth2-proxy);
    ``sa_token_path``: a projected service-account token file, read and refreshed by kfp's
    ``ServiceAccountTokenVolumeCredentials`` (inside a cluster; audience ``pipelines.kubeflow.org``).
    At most one of them; none for a single-user deployment or a port-forward.
    """

    token: str | None = None
    cookies: str | None = None
    sa_token_path: str | None = None
    ssl_ca_cert: str | None = None
    verify_ssl: bool | None = None

    def client_kwargs(self) -> dict[str, Any]:
        chosen = [n for n in ("token", "cookies", "sa_token_path") if getattr(self, n)]
        if len(chosen) > 1:
            raise ConfigError(f"pipeline submit: choose one way to authenticate, got {chosen}")
        kwargs: dict[str, Any] = {}
        if self.token:
            kwargs["existing_token"] = self.token
        if self.cookies:
            kwargs["cookies"] = self.cookies
        if self.sa_token_path:
            token_file = Path(self.sa_token_path)
            if not token_file.is_file():
                raise ConfigError(f"--sa-token-path {token_file}: no such token file")
            from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

            kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=str(token_file))
        if self.ssl_ca_cert:
            kwargs["ssl_ca_cert"] = self.ssl_ca_cert
        if self.verify_ssl is not None:
            kwargs["verify_ssl"] = self.verify_ssl
        return kwargs


def parse_version(text: str) -> tuple[int, ...] | None:
    """``2.14.0`` / ``v2.4.1-rc.1`` -> (2, 14, 0) / (2, 4, 1); None when there is no version."""
    import re

    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g or 0) for g in match.groups()) if match else None


def check_backend_version(reported: str | None) -> str:
    """Refuse a backend older than MIN_BACKEND_VERSION; a note when its version is unknown."""
    from components.settings import MIN_BACKEND_VERSION

    minimum = ".".join(map(str, MIN_BACKEND_VERSION))
    version = parse_version(reported or "")
    if version is None:
        return (
            f"note: the KFP API server did not report its version; this pipeline needs a backend "
            f">= {minimum} (dsl.Collected)"
        )
    if version < MIN_BACKEND_VERSION:
        raise ConfigError(
            f"the KFP backend is {reported}; this pipeline needs >= {minimum} (its fan-ins use "
            "dsl.Collected, which older backends reject). Upgrade Kubeflow Pipelines, or pass "
            "--skip-version-check to submit anyway"
        )
    return f"KFP backend {reported} (>= {minimum})"


def backend_version(client: Any) -> str | None:
    """The backend's version as its API server reports it (``tag_name`` of /apis/v1beta1/healthz on
    releases that have it); None when it does not say."""
    api_client = getattr(getattr(client, "_healthz_api", None), "api_client", None)
    if api_client is None:
        return None
    for path in ("/apis/v2beta1/healthz", "/apis/v1beta1/healthz"):
        body = _get_json(api_client, path)
        if isinstance(body, dict):
            for key in ("tag_name", "version", "kfp_version"):
                if body.get(key):
                    return str(body[key])
    return None


def _get_json(api_client: Any, path: str) -> Any:
    try:
        return api_client.call_api(
            path, "GET", response_type="object", auth_settings=["Bearer"], _return_http_data_only=True
        )
    except Exception:  # noqa: BLE001 - an informational probe; the submit itself reports real errors
        return None


def submit(
    package: str | Path,
    host: str,
    experiment: str | None = None,
    namespace: str | None = None,
    arguments: dict[str, Any] | None = None,
    run_name: str | None = None,
    enable_caching: bool | None = None,
    auth: Auth | None = None,
    check_version: bool = True,
    log: Any = print,
) -> str:
    """Submit a compiled package to the KFP API at ``host`` (authenticated by ``auth``); returns the run
    id. The backend's version is checked against MIN_BACKEND_VERSION when the server reports it."""
    import kfp

    package = Path(package)
    if not package.is_file():
        raise ConfigError(f"{package}: pipeline package not found (run `reidflow pipeline compile` first)")
    if not host.startswith(("http://", "https://")):
        raise ConfigError(
            f"--host {host!r}: expected the KFP API URL, e.g. https://kubeflow.example.com/pipeline"
        )
    kwargs = (auth or Auth()).client_kwargs()
    client = kfp.Client(host=host, namespace=namespace, **kwargs)
    if check_version:
        log(check_backend_version(backend_version(client)))
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments or {},
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        enable_caching=enable_caching,
    )
    return str(result.run_id)
