"""The ``reidflow`` command: one sub-command per stage, each thin (parse, load config, call run())."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from reidflow.errors import ReidflowError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="reidflow: reproducible, auditable domain-generalizable person re-ID pipelines.",
)
err_console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params YAML file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-S", help="override: section.key=value (YAML value)")
]
InputOpt = Annotated[list[str] | None, typer.Option("--input", "-i", help="NAME=URI of an input artifact")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="output artifact directory (path or s3://)")]
OrchOpt = Annotated[str | None, typer.Option("--orchestrator", help="dvc | kfp | cli (recorded in lineage)")]
StageNameOpt = Annotated[str | None, typer.Option("--stage-name", help="orchestrator's stage/task name")]


def _inputs(pairs: list[str] | None) -> dict[str, list[str]]:
    from reidflow.errors import ConfigError

    out: dict[str, list[str]] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--input {pair!r}: expected NAME=URI")
        name, uri = pair.split("=", 1)
        out.setdefault(name.strip(), []).append(uri.strip())
    return out


def _load(params: Path, overrides: list[str] | None) -> dict[str, Any]:
    from reidflow.config import load_params

    return load_params(params, overrides or [])


def _ctx(orchestrator: str | None, stage_name: str | None):
    from reidflow.store.lineage import RunContext

    return RunContext.from_env(orchestrator, stage_name)


@app.command()
def synth(
    output: OutputOpt = "data/synth",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    reuse: Annotated[
        bool, typer.Option("--reuse", help="keep an existing output made from the same params")
    ] = False,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """Generate the synthetic multi-domain pedestrian datasets (Market-1501 layout)."""
    from reidflow.config import section
    from reidflow.stages import synth as stage

    _check_output(output)
    raw = _load(params, set_)
    cfg = section(raw, "synth", stage.SynthConfig, source=str(params))
    out = stage.run(cfg, output, _ctx(orchestrator, stage_name), reuse=reuse)
    err_console.print(f"[green]synth[/green]: wrote {_shown(out)}")


@app.command()
def shard(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="name under 'datasets:' in params")],
    output: OutputOpt,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    input_: InputOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """Turn one dataset into WebDataset shards + a parquet index + a dataset card."""
    from reidflow.config import section
    from reidflow.stages import shard as stage

    _check_output(output)
    raw = _load(params, set_)
    cfg = section(raw, "shard", stage.ShardConfig, source=str(params))
    src = stage.dataset_source(raw, dataset, source=str(params))
    raw_uri = (_inputs(input_).get("raw") or [None])[0]
    out = stage.run(cfg, dataset, src, output, raw_uri=raw_uri, ctx=_ctx(orchestrator, stage_name))
    err_console.print(f"[green]shard[/green]: wrote {_shown(out)}")


MetricsPortOpt = Annotated[
    int | None,
    typer.Option("--metrics-port", help="serve Prometheus /metrics on this port while the stage runs"),
]


@contextmanager
def _observed(stage: str, instance: str, port: int | None) -> Iterator[Any]:
    """Prometheus metrics of one stage run (reidflow.obs.live): served on --metrics-port (or
    REIDFLOW_METRICS_ADDR), pushed live and at the end when a Pushgateway is configured, grouped by
    REIDFLOW_RUN_ID when set."""
    from reidflow.obs.live import observed

    with observed(stage, instance, port=port) as metrics:
        yield metrics


def _instance(output: str) -> str:
    """Stable Pushgateway grouping key: the output location (reruns replace their own group)."""
    from reidflow.store.lineage import scrub

    return scrub(output).replace("/", "_").strip("_") or "default"


@app.command()
def pretrain(
    output: OutputOpt,
    input_: InputOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="shortcut for --set pretrain.model.backbone=")
    ] = None,
    section_name: Annotated[
        str, typer.Option("--section", help="params section to read (e.g. camera)")
    ] = "pretrain",
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
    metrics_port: MetricsPortOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """Supervised training on labelled source shards (--input source=URI ..., optional --input target=URI)."""
    from reidflow.stages import pretrain as stage

    def train(cfg: Any, inputs: dict[str, list[str]], ctx: Any, hooks: tuple[Any, ...]) -> Path:
        target = (inputs.get("target") or [None])[0]
        return stage.run(cfg, inputs.get("source", []), target, output, ctx, resume=resume, hooks=hooks)

    _run_training(
        section_name, stage.PretrainConfig, train, params, set_, backbone, input_, output, metrics_port,
        orchestrator, stage_name,
    )  # fmt: skip


@app.command()
def metabin(
    output: OutputOpt,
    input_: InputOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="shortcut for --set <section>.model.backbone=")
    ] = None,
    section_name: Annotated[str, typer.Option("--section", help="params section to read")] = "metabin",
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
    metrics_port: MetricsPortOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """MetaBIN domain generalization (--input source=URI ..., optional unseen --input target=URI ... for eval only)."""
    from reidflow.stages import metabin as stage

    def train(cfg: Any, inputs: dict[str, list[str]], ctx: Any, hooks: tuple[Any, ...]) -> Path:
        targets = inputs.get("target", [])
        return stage.run(cfg, inputs.get("source", []), targets, output, ctx, resume=resume, hooks=hooks)

    _run_training(
        section_name, stage.MetabinConfig, train, params, set_, backbone, input_, output, metrics_port,
        orchestrator, stage_name,
    )  # fmt: skip


@app.command()
def mmt(
    output: OutputOpt,
    input_: InputOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    section_name: Annotated[str, typer.Option("--section", help="params section to read")] = "mmt",
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
    metrics_port: MetricsPortOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """MMT+ adaptation: --input model=URI twice (two pretrained nets), --input source=URI ..., --input target=URI."""
    from reidflow.config import section
    from reidflow.obs.train_hook import PrometheusHook
    from reidflow.stages import mmt as stage

    _check_output(output)
    cfg = section(_load(params, set_), section_name, stage.MMTStageConfig, source=str(params))
    inputs = _inputs(input_)
    _reject_unknown_inputs(inputs, {"model", "source", "target"})
    target = (inputs.get("target") or [None])[0]
    with _observed(section_name, _instance(output), metrics_port) as metrics:
        out = stage.run(
            cfg, inputs.get("model", []), inputs.get("source", []), target, output,
            _ctx(orchestrator, stage_name), resume=resume, hooks=(PrometheusHook(metrics),),
        )  # fmt: skip
    err_console.print(f"[green]{section_name}[/green]: wrote {out}")


def _run_training(
    section_name: str,
    config_type: type,
    train: Any,
    params: Path,
    set_: list[str] | None,
    backbone: str | None,
    input_: list[str] | None,
    output: str,
    metrics_port: int | None,
    orchestrator: str | None,
    stage_name: str | None,
) -> None:
    """What every training command shares: params (+ --backbone), inputs source/target, metrics, hooks."""
    from reidflow.config import section
    from reidflow.obs.train_hook import PrometheusHook

    _check_output(output)
    overrides = list(set_ or [])
    if backbone:
        overrides.append(f"{section_name}.model.backbone={backbone}")
    cfg = section(_load(params, overrides), section_name, config_type, source=str(params))
    inputs = _inputs(input_)
    _reject_unknown_inputs(inputs, {"source", "target"})
    with _observed(section_name, _instance(output), metrics_port) as metrics:
        out = train(cfg, inputs, _ctx(orchestrator, stage_name), (PrometheusHook(metrics),))
    err_console.print(f"[green]{section_name}[/green]: wrote {_shown(out)}")


@app.command()
def sda(
    mode: Annotated[str, typer.Argument(help="train | translate")],
    output: OutputOpt,
    input_: InputOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    section_name: Annotated[str, typer.Option("--section", help="params section to read")] = "sda",
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
    metrics_port: MetricsPortOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """SDA translation. `train`: --input source=URI ... --input target=URI [--input source_model=URI
    --input target_model=URI] -> generator; `translate`: --input generator=URI --input source=URI ... -> shards."""
    from reidflow.config import section
    from reidflow.errors import ConfigError
    from reidflow.obs.train_hook import PrometheusHook
    from reidflow.stages import sda as stage

    if mode not in ("train", "translate"):
        raise ConfigError(f"sda {mode!r}: unknown mode; expected train or translate")
    _check_output(output)
    cfg = section(_load(params, set_), section_name, stage.SDAConfig, source=str(params))
    inputs = _inputs(input_)
    ctx = _ctx(orchestrator, stage_name)

    def first(name: str) -> str | None:
        return (inputs.get(name) or [None])[0]

    if mode == "translate":
        _reject_unknown_inputs(inputs, {"generator", "source"})
        out = stage.translate(cfg, first("generator"), inputs.get("source", []), output, ctx)
    else:
        _reject_unknown_inputs(inputs, {"source", "target", "source_model", "target_model"})
        with _observed(section_name, _instance(output), metrics_port) as metrics:
            out = stage.train(
                cfg, inputs.get("source", []), first("target"), output, first("source_model"),
                first("target_model"), ctx, resume=resume, hooks=(PrometheusHook(metrics),),
            )  # fmt: skip
    err_console.print(f"[green]sda {mode}[/green]: wrote {out}")


@app.command("dg-benchmark")
def dg_benchmark(
    workdir: Annotated[
        Path, typer.Option("--workdir", help="where data, shards and trained runs are kept")
    ] = Path("artifacts/dg_benchmark"),
    output: Annotated[
        str | None, typer.Option("--output", help="report artifact URI (default: <workdir>/report)")
    ] = None,
    table: Annotated[
        Path | None, typer.Option("--table", help="also write the Markdown table (+ plot) here")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """Train every normalization variant x seed on the synthetic DG sources and tabulate unseen-domain results."""
    import shlex
    import sys

    from reidflow.config import section
    from reidflow.stages import dg_benchmark as stage

    raw = _load(params, set_)
    cfg = section(raw, "dg_benchmark", stage.DGBenchmarkConfig, source=str(params))
    command = "reidflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = stage.run(cfg, workdir, output, _ctx(orchestrator, stage_name), command=command, table=table)
    err_console.print(f"[green]dg-benchmark[/green]: wrote {out}" + (f" and {table}" if table else ""))


StudyWorkdirOpt = Annotated[
    Path, typer.Option("--workdir", help="where data, shards and trained runs are kept")
]
StudyOutputOpt = Annotated[
    str | None, typer.Option("--output", help="report artifact URI (default: <workdir>/report)")
]
StudyTableOpt = Annotated[
    Path | None, typer.Option("--table", help="also write the Markdown (+ plots, sample grids) here")
]
StudyTargetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target", help="train only this target (repeatable; to split the study over processes): no report"
    ),
]


def _run_study(
    name: str,
    module: str,
    config: str,
    workdir: Path,
    output: str | None,
    table: Path | None,
    target: list[str] | None,
    params: Path,
    set_: list[str] | None,
    orchestrator: str | None,
    stage_name: str | None,
) -> None:
    """What the study commands share: the section, the command line for the report, --target."""
    import importlib
    import shlex
    import sys

    from reidflow.config import section

    stage = importlib.import_module(f"reidflow.stages.{module}")
    cfg = section(_load(params, set_), module, getattr(stage, config), source=str(params))
    command = "reidflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = stage.run(
        cfg,
        workdir,
        output,
        _ctx(orchestrator, stage_name),
        command=command,
        table=table,
        only_targets=target,
    )
    if out is None:
        err_console.print(f"[green]{name}[/green]: trained {', '.join(target or [])}; no report (--target)")
    else:
        err_console.print(f"[green]{name}[/green]: wrote {out}" + (f" and {table}" if table else ""))


@app.command("sda-study")
def sda_study(
    workdir: StudyWorkdirOpt = Path("artifacts/sda_study"),
    output: StudyOutputOpt = None,
    table: StudyTableOpt = None,
    target: StudyTargetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """Pretrain on raw, CycleGAN- and SDA-translated sources per target style x seed; tabulate the evidence."""
    _run_study(
        "sda-study", "sda_study", "SDAStudyConfig", workdir, output, table, target, params, set_,
        orchestrator, stage_name,
    )  # fmt: skip


@app.command("mmt-study")
def mmt_study(
    workdir: StudyWorkdirOpt = Path("artifacts/mmt_study"),
    output: StudyOutputOpt = None,
    table: StudyTableOpt = None,
    target: StudyTargetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """Direct transfer vs MMT vs MMT+ per target style x seed (two pretrain seeds each); tabulate them."""
    _run_study(
        "mmt-study", "mmt_study", "MMTStudyConfig", workdir, output, table, target, params, set_,
        orchestrator, stage_name,
    )  # fmt: skip


@app.command("visda-study")
def visda_study(
    workdir: StudyWorkdirOpt = Path("artifacts/visda_study"),
    output: StudyOutputOpt = None,
    table: StudyTableOpt = None,
    target: StudyTargetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """The VisDA chain per target style x seed; tabulate raw vs SDA, MMT vs MMT+, singles vs ensemble."""
    _run_study(
        "visda-study", "visda_study", "VisdaStudyConfig", workdir, output, table, target, params, set_,
        orchestrator, stage_name,
    )  # fmt: skip


@app.command("visda-report")
def visda_report(
    output: OutputOpt,
    input_: InputOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """The VisDA chain's ablations: --input raw|sda|mmt|mmt_plus=URI (models, repeatable),
    --input target=URI (query/gallery shards), [--input camera=URI]."""
    from reidflow.config import section
    from reidflow.errors import ConfigError
    from reidflow.stages import visda as stage

    _check_output(output)
    cfg = section(_load(params, set_), "visda", stage.VisdaConfig, source=str(params))
    inputs = _inputs(input_)
    _reject_unknown_inputs(inputs, {*stage.ROLES, "target", "camera"})
    if len(inputs.get("target", [])) != 1:
        raise ConfigError("visda-report: expected exactly one --input target=URI (the target's shards)")
    roles = {role: inputs[role] for role in stage.ROLES if role in inputs}
    out = stage.run(
        cfg, roles, inputs["target"][0], output, (inputs.get("camera") or [None])[0],
        _ctx(orchestrator, stage_name),
    )  # fmt: skip
    err_console.print(f"[green]visda-report[/green]: wrote {_shown(out)} (report: {_shown(out)}/report.html)")


@app.command()
def evaluate(
    output: OutputOpt,
    input_: InputOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    metrics_port: MetricsPortOpt = None,
    orchestrator: OrchOpt = None,
    stage_name: StageNameOpt = None,
) -> None:
    """Evaluate models and their ensemble (--input model=URI ..., --input eval=URI ..., [--input camera=URI])."""
    from reidflow.config import section
    from reidflow.stages import evaluate as stage

    _check_output(output)
    raw = _load(params, set_)
    cfg = section(raw, "evaluate", stage.EvaluateConfig, source=str(params))
    inputs = _inputs(input_)
    _reject_unknown_inputs(inputs, {"model", "eval", "camera"})
    with _observed("evaluate", _instance(output), metrics_port) as metrics:
        out = stage.run(
            cfg,
            inputs.get("model", []),
            inputs.get("eval", []),
            output,
            _ctx(orchestrator, stage_name),
            camera_model=(inputs.get("camera") or [None])[0],
            observer=metrics,
        )
    err_console.print(f"[green]evaluate[/green]: wrote {_shown(out)} (report: {_shown(out)}/report.html)")


def _shown(out: Any) -> str:
    """An output as the user wrote it: a stage returning ``Path("s3://b/x")`` prints ``s3:/b/x``."""
    text = str(out)
    return "s3://" + text[4:] if text.startswith("s3:/") and not text.startswith("s3://") else text


def _check_output(output: str) -> None:
    """Refuse a malformed --output, or one holding something other than a reidflow artifact, before
    any work (nothing is created on the way)."""
    from reidflow.store.artifacts import check_output

    check_output(output)


def _reject_unknown_inputs(inputs: dict[str, list[str]], known: set[str]) -> None:
    from reidflow.errors import ConfigError

    unknown = sorted(set(inputs) - known)
    if unknown:
        raise ConfigError(f"--input {unknown[0]}=...: unknown input name; this stage takes {sorted(known)}")


@app.command("readers")
def readers_cmd() -> None:
    """List the dataset readers (published layouts) reidflow knows."""
    from reidflow.data.readers import list_readers

    for name in list_readers():
        typer.echo(name)


@app.command("presets")
def presets_cmd() -> None:
    """List the synthetic domain-style presets."""
    from reidflow.data.synth import list_presets

    for name in list_presets():
        typer.echo(name)


KFP_MISSING = (
    "reidflow pipeline needs Kubeflow Pipelines (kfp), which is not installed: "
    "pip install 'reidflow[orchestrators]'"
)


def _mount_pipeline_commands() -> None:
    """`reidflow pipeline ...` (Kubeflow): only the CLI knows the orchestrators.

    kfp comes with the ``orchestrators`` extra; without it every other command still works and
    ``reidflow pipeline ...`` says in one line what to install.
    """
    try:
        from pipelines.cli import pipeline_app
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "kfp":
            raise

        @app.command(
            "pipeline",
            help=f"Kubeflow pipeline: compile, run locally, submit. Not available here: {KFP_MISSING}",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )
        def pipeline_without_kfp() -> None:
            from reidflow.errors import ConfigError

            raise ConfigError(KFP_MISSING)

        return
    app.add_typer(pipeline_app, name="pipeline")


_mount_pipeline_commands()

lineage_app = typer.Typer(no_args_is_help=True, help="Show, verify and draw the ancestry of an artifact.")
app.add_typer(lineage_app, name="lineage")
BaseOpt = Annotated[
    Path | None,
    typer.Option(
        "--base", help="directory relative input URIs resolve against (default: the current directory)"
    ),
]


@lineage_app.command("show")
def lineage_show(uri: str, base: BaseOpt = None) -> None:
    """Print the ancestry of an artifact down to the raw data (with the md5 of a dataset's .dvc file)."""
    from reidflow.store.ancestry import load_tree, render_text

    typer.echo("\n".join(render_text(load_tree(uri, base=base))))


@lineage_app.command("verify")
def lineage_verify(uri: str, base: BaseOpt = None) -> None:
    """Re-hash the artifact and all its ancestors; exit non-zero naming the first mismatch."""
    from reidflow.store.ancestry import verify

    checked = verify(uri, base=base)
    err_console.print(
        f"[green]ok[/green]: {len(checked)} artifact(s) verified: " + ", ".join(checked),
        markup=True,
        highlight=False,
    )


@lineage_app.command("digests")
def lineage_digests(
    paths: Annotated[list[str], typer.Argument(help="artifacts, or directories of artifacts (local)")],
    output: Annotated[Path, typer.Option("--output", help="JSON file to write")],
) -> None:
    """Write the content and record digests of local artifacts (no run timestamps): a pipeline
    dependency that changes only when what the artifacts hold changes."""
    from reidflow.store.payload_digests import write_payload_digests

    out = write_payload_digests(paths, output)
    err_console.print(f"[green]lineage digests[/green]: wrote {out}")


@lineage_app.command("graph")
def lineage_graph(
    uri: str, format_: Annotated[str, typer.Option("--format", "-f")] = "mermaid", base: BaseOpt = None
) -> None:
    """Draw the ancestry as a Mermaid flowchart or a Graphviz dot graph."""
    from reidflow.store.ancestry import load_tree, render_graph

    typer.echo(render_graph(load_tree(uri, base=base), format_), nl=False)


@app.command()
def version() -> None:
    """Print the reidflow version."""
    import reidflow

    typer.echo(reidflow.__version__)


def _print_error(exc: BaseException | str) -> None:
    """The error contract: one scrubbed line on stderr, never a traceback."""
    from rich.text import Text

    from reidflow.errors import one_line
    from reidflow.store.scrub import scrub_text

    text = one_line(exc) if isinstance(exc, BaseException) else exc
    err_console.print(Text("error: ", style="red") + Text(scrub_text(text)), highlight=False, soft_wrap=True)


def _boto_errors() -> tuple[type[BaseException], ...]:
    try:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return ()
    return (BotoCoreError, ClientError, Boto3Error)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except ReidflowError as exc:
        _print_error(exc)
        sys.exit(2)
    except _boto_errors() as exc:  # S3 calls outside reidflow.store.s3 (which names the URI itself)
        from reidflow.store.s3 import describe_error

        _print_error(f"S3: {describe_error(exc)}")
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
