"""``reidflow pipeline …``: compile, run locally, submit (mounted by reidflow.cli as a sub-app)."""

from pathlib import Path
from typing import Annotated

import typer

pipeline_app = typer.Typer(no_args_is_help=True, help="Kubeflow pipeline: compile, run locally, submit.")

ParamsOpt = Annotated[
    Path | None,
    typer.Option(
        "--params",
        "-p",
        help="params YAML file [default: params.yaml; --pipeline visda: pipelines/visda/params.yaml]",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-S", help="override: section.key=value (YAML value)")
]
PipelineOpt = Annotated[
    str,
    typer.Option(
        "--pipeline",
        help="reid: the main pipeline | visda: the VisDA-2020 chain (SDA, pretrain x 2 seeds, MMT/MMT+, report)",
    ),
]


def _params(params: Path | None, pipeline: str) -> Path:
    """--params, else the pipeline's own params file."""
    from pipelines.runner import DEFAULT_PARAMS, check_pipeline

    return params if params is not None else DEFAULT_PARAMS[check_pipeline(pipeline)]


@pipeline_app.command("compile")
def compile_cmd(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="pipeline package (.yaml) [default: <pipeline>_pipeline.yaml]",
            show_default=False,
        ),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    pipeline: PipelineOpt = "reid",
) -> None:
    """Compile the pipeline (image, resources and defaults from params.yaml) to a KFP v2 YAML package."""
    from pipelines.runner import compile_pipeline

    params = _params(params, pipeline)
    out = output if output is not None else Path(f"{pipeline}_pipeline.yaml")
    typer.echo(str(compile_pipeline(params, out, set_ or [], pipeline=pipeline)))


@pipeline_app.command("run")
def run_cmd(
    local: Annotated[
        bool, typer.Option("--local", help="run on this machine with kfp.local (required)")
    ] = False,
    pipeline_root: Annotated[Path, typer.Option("--pipeline-root", help="where local artifacts go")] = Path(
        "artifacts/kfp"
    ),
    params: ParamsOpt = None,
    set_: SetOpt = None,
    until: Annotated[
        str, typer.Option("--until", help="last stage to run: synth | shard | pretrain | evaluate")
    ] = "evaluate",
    isolated: Annotated[
        bool,
        typer.Option(
            "--isolated",
            help="run every task as if in its own pod (fresh working dir, pod-local outputs that vanish)",
        ),
    ] = False,
    pipeline: PipelineOpt = "reid",
) -> None:
    """Run the whole pipeline locally (CPU, subprocess runner); prints the report and metrics paths."""
    from pipelines.reid_pipeline import ALL_STAGES
    from pipelines.runner import run_local
    from reidflow.errors import ConfigError

    if not local:
        raise ConfigError(
            "reidflow pipeline run: only --local is supported; use `reidflow pipeline submit` for a cluster"
        )
    if until not in ALL_STAGES:
        raise ConfigError(f"--until {until!r}: expected one of {list(ALL_STAGES)}")
    stages = ALL_STAGES[: ALL_STAGES.index(until) + 1]
    params = _params(params, pipeline)
    result = run_local(params, pipeline_root, set_ or [], stages=stages, isolated=isolated, pipeline=pipeline)
    for stage, paths in result.artifacts.items():
        for path in paths:
            typer.echo(f"{stage}\t{path}")
    if result.report:
        typer.echo(f"report\t{result.report}")
        typer.echo(f"metrics\t{result.metrics}")


@pipeline_app.command("submit")
def submit_cmd(
    host: Annotated[str, typer.Option("--host", help="KFP API URL")],
    package: Annotated[
        Path | None,
        typer.Option(
            "--package", help="compiled pipeline YAML [default: <pipeline>_pipeline.yaml]", show_default=False
        ),
    ] = None,
    experiment: Annotated[str | None, typer.Option("--experiment")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace")] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="pipeline argument NAME=VALUE (YAML value)")
    ] = None,
    run_name: Annotated[str | None, typer.Option("--run-name")] = None,
    token_env: Annotated[
        str | None,
        typer.Option(
            "--token-env", help="name of an env variable holding a bearer token (kubectl create token)"
        ),
    ] = None,
    cookies_env: Annotated[
        str | None,
        typer.Option(
            "--cookies-env", help="name of an env variable holding session cookies (authservice_session=...)"
        ),
    ] = None,
    sa_token_path: Annotated[
        Path | None,
        typer.Option("--sa-token-path", help="projected service-account token file (inside a cluster)"),
    ] = None,
    ssl_ca_cert: Annotated[
        Path | None, typer.Option("--ssl-ca-cert", help="CA bundle of the API server")
    ] = None,
    skip_version_check: Annotated[
        bool, typer.Option("--skip-version-check", help="submit even to a backend older than the minimum")
    ] = False,
    pipeline: Annotated[
        str, typer.Option("--pipeline", help="reid | visda: only picks the default --package")
    ] = "reid",
) -> None:
    """Submit a compiled package to a Kubeflow Pipelines server; prints the run id.

    Credentials are never passed on the command line (shell history, process list): name the
    environment variable that holds them.
    """
    import os

    import yaml

    from pipelines.runner import Auth, check_pipeline, submit
    from reidflow.errors import ConfigError

    def from_env(name: str | None, option: str) -> str | None:
        if name is None:
            return None
        value = os.environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"{option} {name}: that environment variable is empty or unset")
        return value

    package = package if package is not None else Path(f"{check_pipeline(pipeline)}_pipeline.yaml")
    auth = Auth(
        token=from_env(token_env, "--token-env"),
        cookies=from_env(cookies_env, "--cookies-env"),
        sa_token_path=str(sa_token_path) if sa_token_path else None,
        ssl_ca_cert=str(ssl_ca_cert) if ssl_ca_cert else None,
    )

    arguments = {}
    for pair in arg or []:
        if "=" not in pair:
            raise ConfigError(f"--arg {pair!r}: expected NAME=VALUE")
        name, value = pair.split("=", 1)
        arguments[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    run_id = submit(
        package,
        host,
        experiment,
        namespace,
        arguments,
        run_name,
        auth=auth,
        check_version=not skip_version_check,
        log=lambda line: typer.echo(line, err=True),
    )
    typer.echo(run_id)


@pipeline_app.command("prune-metrics")
def prune_metrics_cmd(
    pushgateway: Annotated[
        str, typer.Option("--pushgateway", help="Pushgateway URL, e.g. http://pushgateway:9091")
    ],
    older_than_hours: Annotated[
        float, typer.Option("--older-than-hours", help="delete groups last pushed before this many hours")
    ] = 24 * 7,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be deleted")] = False,
) -> None:
    """Delete stale reidflow groups (one per run, stage and task) from a Pushgateway."""
    from pipelines.metrics_gc import prune

    for group in prune(pushgateway, older_than_hours * 3600, dry_run=dry_run):
        shown = ",".join(f"{k}={v}" for k, v in sorted(group.labels.items()))
        typer.echo(("would delete\t" if dry_run else "deleted\t") + shown)
