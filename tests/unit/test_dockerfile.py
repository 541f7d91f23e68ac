"""Structural checks of docker/Dockerfile (no Docker engine here): stages, pins, user, labels, and that
everything the image is asked to run (CLI commands, stage functions) exists in the package."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPONENT_MODULES = [
    "components.synth",
    "components.shard",
    "components.pretrain",
    "components.evaluate",
    "components.collect",
    "components.pretrain_multinode",
    "components.camera",
    "components.metabin",
    "components.sda",
    "components.mmt",
    "components.visda_report",
]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse_dockerfile(text: str) -> tuple[list[tuple[str, str]], list[Stage]]:
    """(global ARGs before the first FROM, stages); continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
        else:
            preamble.append((keyword, rest.strip()))
    return preamble, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    preamble, stages = parse_dockerfile(DOCKERFILE.read_text())
    args = {}
    for keyword, rest in preamble:
        assert keyword == "ARG", f"only ARG may precede the first FROM, got {keyword}"
        name, _, default = rest.partition("=")
        args[name] = default
    return args, stages


def is_pinned(image: str) -> bool:
    """A tag with a version number (not latest) or a digest."""
    if "@sha256:" in image:
        return True
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return bool(tag) and tag != "latest" and bool(re.search(r"\d+\.\d+", tag))


def test_parser_sees_continuations_and_stages() -> None:
    preamble, stages = parse_dockerfile(
        "ARG A=1\nFROM x:1.0 AS one\nRUN a \\\n  # note\n  && b\nFROM one\nUSER 5\n"
    )
    assert preamble == [("ARG", "A=1")]
    assert [(s.base, s.name) for s in stages] == [("x:1.0", "one"), ("one", None)]
    assert stages[0].args("RUN") == ["a && b"]


def test_multi_stage_with_pinned_bases(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert len(stages) >= 3
    names = {s.name for s in stages}
    assert {"builder", "runtime"} <= names
    assert stages[-1].name == "runtime"
    assert is_pinned(args["BASE_IMAGE"]) and "cuda" in args["BASE_IMAGE"] and "runtime" in args["BASE_IMAGE"]
    for stage in stages:
        base = stage.base
        if base.startswith("${"):
            assert base.strip("${}") in args, f"FROM {base}: ARG not declared before FROM"
        else:
            assert base in names or is_pinned(base), f"FROM {base}: pin a version tag or digest"
    runtime_stage = stages[-1]
    assert any(a.startswith("--from=builder") for a in runtime_stage.args("COPY")), (
        "runtime must copy the venv"
    )
    assert not any("apt-get install" in r and "build-essential" in r for r in runtime_stage.args("RUN"))


def test_cpu_variant_is_documented_with_a_pinned_tag() -> None:
    text = DOCKERFILE.read_text() + (ROOT / "docker" / "README.md").read_text()
    cpu = re.findall(r"BASE_IMAGE=(python:3\.11[^\s\\`]*)", text)
    assert cpu and all(is_pinned(img) for img in cpu)
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_every_pip_install_is_constrained(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    installs = [
        part for s in stages for run in s.args("RUN") for part in run.split("&&") if "pip install" in part
    ]
    assert len(installs) >= 2
    for cmd in installs:
        assert "-c constraints.txt" in cmd, f"unconstrained: {cmd.strip()}"
    torch_install = [c for c in installs if "torch==" in c]
    assert torch_install and "TORCH_INDEX_URL" in torch_install[0]
    builder = next(s for s in stages if s.name == "builder")
    assert any(a.startswith("TORCH_INDEX_URL=") for a in builder.args("ARG"))
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def test_runtime_runs_as_non_root(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    users = stages[-1].args("USER")
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_keyword = [k for k, _ in stages[-1].instructions if k in ("USER", "RUN", "COPY")][-1]
    assert last_keyword == "USER", "nothing may run as root after USER"


def test_labels_and_commit_provenance(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    assert any(a.startswith("GIT_COMMIT") for a in final.args("ARG")), (
        "ARG GIT_COMMIT must be in the final stage"
    )
    labels = dict(
        shlex.split(tok)[0].split("=", 1)
        for lbl in final.args("LABEL")
        for tok in re.findall(r'[\w.-]+="[^"]*"', lbl)
    )
    assert labels["org.opencontainers.image.revision"] == "${GIT_COMMIT}"
    for key in ("title", "source", "version", "licenses", "created"):
        assert f"org.opencontainers.image.{key}" in labels
    env = " ".join(final.args("ENV"))
    assert "REIDFLOW_GIT_COMMIT=${GIT_COMMIT}" in env
    from reidflow.store.lineage import git_info

    assert "REIDFLOW_GIT_COMMIT" in inspect.getsource(git_info), "lineage must read the env fallback"


def test_entrypoint_is_the_reidflow_console_script(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    import tomllib

    _, stages = dockerfile
    [entry] = stages[-1].args("ENTRYPOINT")
    assert json.loads(entry) == ["reidflow"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["reidflow"] == "reidflow.cli:main"


def test_copied_sources_exist_and_are_not_dockerignored(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    sources = []
    for stage in stages:
        for copy in stage.args("COPY"):
            parts = [p for p in copy.split() if not p.startswith("--")]
            if any(p.startswith("--from") for p in copy.split()):
                continue
            sources += parts[:-1]
    assert {"constraints.txt", "pyproject.toml", "src", "components", "pipelines"} <= {
        s.rstrip("/") for s in sources
    }
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert src.rstrip("/") not in ignored, f"COPY {src}: excluded by .dockerignore"


def cli_command_names() -> set[str]:
    from reidflow.cli import app

    names = set()
    for cmd in app.registered_commands:
        names.add(cmd.name or cmd.callback.__name__.replace("_", "-"))
    return names


def test_cli_commands_the_image_runs_exist(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    from components import runtime

    _, stages = dockerfile
    used = set(runtime.CLI_STAGE_COMMANDS)
    for stage in stages:
        for run in stage.args("RUN"):
            used |= {m for m in re.findall(r"\breidflow\s+([a-z][\w-]*)", run)}
    used.discard("--help")
    assert "pretrain" in used
    missing = used - cli_command_names()
    assert not missing, (
        f"the image/components run `reidflow {sorted(missing)}` but the CLI has no such command"
    )


def stage_calls(module_name: str) -> list[tuple[str, str, ast.Call]]:
    """(stage module, attribute, call node) for every ``<stage>.<attr>(...)`` in the component body."""
    module = importlib.import_module(module_name)
    tree = ast.parse(inspect.getsource(module))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "reidflow.stages":
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in aliases
        ):
            calls.append((aliases[node.func.value.id], node.func.attr, node))
    return calls


@pytest.mark.parametrize("module_name", COMPONENT_MODULES)
def test_stage_functions_called_by_components_exist(module_name: str) -> None:
    calls = stage_calls(module_name)
    if module_name in ("components.collect", "components.pretrain_multinode"):
        assert calls == []  # plumbing only / launches the CLI
        return
    assert any(attr in ("run", "train", "translate") for _, attr, _ in calls), f"{module_name} runs no stage"
    for stage, attr, call in calls:
        target = getattr(importlib.import_module(f"reidflow.stages.{stage}"), attr, None)
        assert target is not None, f"{module_name}: reidflow.stages.{stage}.{attr} does not exist"
        if inspect.isfunction(target):
            sig = inspect.signature(target)
            sig.bind(*range(len(call.args)), **{kw.arg: None for kw in call.keywords if kw.arg})


@pytest.mark.parametrize(
    "module_name",
    [
        "components.synth",
        "components.shard",
        "components.pretrain",
        "components.evaluate",
        "components.visda_report",
    ],
)
def test_stage_attributes_used_by_components_exist(module_name: str) -> None:
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    stages = {
        a.asname or a.name: a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "reidflow.stages"
        for a in n.names
    }
    used = {
        (stages[n.value.id], n.attr)
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in stages
    }
    assert any(attr.endswith("Config") for _, attr in used), f"{module_name} validates no stage config"
    for stage, attr in used:
        assert hasattr(importlib.import_module(f"reidflow.stages.{stage}"), attr), (
            f"reidflow.stages.{stage}.{attr}"
        )
