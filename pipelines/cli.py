"""``reidflow pipeline …``: compile, run locally, submit (mounted by reidflow.cli as a sub-app)."""

from pathlib import Path
from typing import Annotated

import typer

pipeline_app = typer.Typer(no_args_is_help=True, help="Kubeflow pipeline: compile, run locally, submit.")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params YAML file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-S", help="override: section.key=value (YAML value)")
]


@pipeline_app.command("compile")
def compile_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="pipeline package (.yaml)")] = Path(
        "reid_pipeline.yaml"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Compile the pipeline (image, resources and defaults from params.yaml) to a KFP v2 YAML package."""
    from pipelines.runner import compile_pipeline

    typer.echo(str(compile_pipeline(params, output, set_ or [])))


@pipeline_app.command("run")
def run_cmd(
    local: Annotated[
        bool, typer.Option("--local", help="run on this machine with kfp.local (required)")
    ] = False,
    pipeline_root: Annotated[Path, typer.Option("--pipeline-root", help="where local artifacts go")] = Path(
        "artifacts/kfp"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    until: Annotated[
        str, typer.Option("--until", help="last stage to run: synth | shard | pretrain | evaluate")
    ] = "evaluate",
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
    result = run_local(params, pipeline_root, set_ or [], stages=ALL_STAGES[: ALL_STAGES.index(until) + 1])
    for stage, paths in result.artifacts.items():
        for path in paths:
            typer.echo(f"{stage}\t{path}")
    if result.report:
        typer.echo(f"report\t{result.report}")
        typer.echo(f"metrics\t{result.metrics}")


@pipeline_app.command("submit")
def submit_cmd(
    host: Annotated[str, typer.Option("--host", help="KFP API URL")],
    package: Annotated[Path, typer.Option("--package", help="compiled pipeline YAML")] = Path(
        "reid_pipeline.yaml"
    ),
    experiment: Annotated[str | None, typer.Option("--experiment")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace")] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="pipeline argument NAME=VALUE (YAML value)")
    ] = None,
    run_name: Annotated[str | None, typer.Option("--run-name")] = None,
) -> None:
    """Submit a compiled package to a Kubeflow Pipelines server; prints the run id."""
    import yaml

    from pipelines.runner import submit
    from reidflow.errors import ConfigError

    arguments = {}
    for pair in arg or []:
        if "=" not in pair:
            raise ConfigError(f"--arg {pair!r}: expected NAME=VALUE")
        name, value = pair.split("=", 1)
        arguments[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    typer.echo(submit(package, host, experiment, namespace, arguments, run_name))
