"""A plain install (no `orchestrators` extra) has no kfp: the CLI must still work, except `pipeline`.

The real console script runs in a subprocess whose interpreter cannot import kfp: a sitecustomize on
PYTHONPATH puts a finder in front of sys.meta_path that refuses ``kfp`` and ``kfp.*``, which is what
Python does when the package is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.layouts import make_market1501

BLOCKER = """
import importlib.abc, sys

class _NoKfp(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "kfp" or name.startswith("kfp."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoKfp())
"""
REIDFLOW = Path(sys.executable).with_name("reidflow")


@pytest.fixture()
def no_kfp_env(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), COLUMNS="200", DVC_NO_ANALYTICS="1")
    return env


def reidflow(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REIDFLOW), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_blocker_really_hides_kfp(no_kfp_env):
    probe = subprocess.run(
        [sys.executable, "-c", "import kfp"], env=no_kfp_env, capture_output=True, text=True, check=False
    )
    assert probe.returncode != 0 and "No module named 'kfp'" in probe.stderr


def test_help_and_every_command_but_pipeline_work_without_kfp(no_kfp_env):
    top = reidflow(no_kfp_env, "--help")
    assert top.returncode == 0, top.stderr
    commands = [
        "synth", "shard", "pretrain", "metabin", "dg-benchmark", "sda", "sda-study", "mmt", "mmt-study",
        "evaluate", "readers", "presets",
    ]  # fmt: skip
    for command in commands + ["lineage", "pipeline", "version"]:
        assert command in top.stdout
    for command in commands + ["lineage show", "lineage verify", "lineage graph", "lineage digests"]:
        result = reidflow(no_kfp_env, *command.split(), "--help")
        assert result.returncode == 0, f"{command} --help: {result.stderr}"
    readers = reidflow(no_kfp_env, "readers")
    assert readers.returncode == 0 and "personx" in readers.stdout.split()
    assert reidflow(no_kfp_env, "version").returncode == 0


def test_a_stage_runs_without_kfp(no_kfp_env, tmp_path):
    layout = make_market1501(tmp_path / "raw")
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"datasets": {"tiny": {"reader": "market1501", "root": str(layout.root)}}, "shard": {}}
        )
    )
    result = reidflow(
        no_kfp_env, "shard", "--dataset", "tiny", "--params", str(params), "--output", str(tmp_path / "out")
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "lineage.json").is_file()


def test_pipeline_says_in_one_line_what_to_install(no_kfp_env):
    for args in (["pipeline"], ["pipeline", "compile", "--output", "x.yaml"]):
        result = reidflow(no_kfp_env, *args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert "kfp" in lines[0] and "pip install 'reidflow[orchestrators]'" in lines[0]
