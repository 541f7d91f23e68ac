"""The real dvc.yaml on tiny data: dvc repro, dvc exp run -S, metrics/plots, push/pull to S3 (moto)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, reidflow, tiny_params, write_params

pytestmark = pytest.mark.integration
DVC = str(Path(sys.executable).parent / "dvc")


def run(*args: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=1200
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A git repo holding this project's dvc.yaml/sources with tiny params, after `dvc repro`."""
    root = tmp_path_factory.mktemp("dvcproj")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = tiny_params(all_domains=True)
    params["evaluate"]["report"]["retrieval_queries"] = 2
    write_params(root / "params.yaml", params)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "REIDFLOW_NO_PROGRESS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    run("git", "init", "-q", cwd=root, env=env)
    reidflow("synth", "--output", "data/synth", cwd=root, env=env)
    run(DVC, "add", "-q", "data", cwd=root, env=env)
    run("git", "add", "-A", cwd=root, env=env)
    run("git", "commit", "-qm", "tiny project", cwd=root, env=env)
    run(DVC, "repro", cwd=root, env=env)
    return root, env


def test_repro_builds_every_stage_and_is_up_to_date(project):
    root, env = project
    for rel in (
        "artifacts/shards/personx_like",
        "artifacts/models/osnet_x0_25",
        "artifacts/models/mobilenetv2_x0_5",
        "artifacts/models/camera",
        "artifacts/models/osnet_x0_25-metabin",
        "artifacts/evaluate",
    ):
        assert (root / rel / "lineage.json").is_file(), rel
    metabin = json.loads((root / "artifacts/models/osnet_x0_25-metabin/lineage.json").read_text())
    assert metabin["stage"] == "metabin" and len(metabin["inputs"]) == 6  # 5 sources + the unseen target
    lineage = json.loads((root / "artifacts/models/osnet_x0_25/lineage.json").read_text())
    assert lineage["runtime"]["orchestrator"] == "dvc" and lineage["stage"] == "pretrain@osnet_x0_25"
    assert "up to date" in run(
        DVC, "status", cwd=root, env=env
    ) or "Data and pipelines are up to date" in run(DVC, "status", cwd=root, env=env)
    shown = reidflow("lineage", "show", "artifacts/evaluate", cwd=root, env=env).stdout
    assert "data.dvc md5" in shown
    reidflow("lineage", "verify", "artifacts/evaluate", cwd=root, env=env)


def test_metrics_and_plots_show(project):
    root, env = project
    metrics = run(DVC, "metrics", "show", "--json", cwd=root, env=env)
    data = json.loads(metrics)
    flat = json.dumps(data)
    assert "cross_domain_mAP" in flat and "summary" in flat
    out = run(DVC, "plots", "show", "--json", cwd=root, env=env)
    assert "cmc_target_city_ensemble" in out and "training_curve.json" in out


def test_exp_run_with_a_param_change_retrains(project):
    root, env = project
    run("git", "add", "-A", cwd=root, env=env)
    run("git", "commit", "-qm", "lock", "--allow-empty", cwd=root, env=env)
    out = run(DVC, "exp", "run", "-S", "pretrain.optimizer.lr=0.002", cwd=root, env=env)
    assert "pretrain@osnet_x0_25" in out and "Running stage 'shard@mall_warm'" not in out
    shown = run(DVC, "exp", "show", "--json", cwd=root, env=env)
    assert "0.002" in shown


def test_failed_stage_is_not_done_and_rerun_succeeds(project):
    root, env = project
    params_file = root / "params.yaml"
    good = params_file.read_text()
    params_file.write_text(good.replace("k1: 20", "k1: 0"))
    proc = subprocess.run(
        [DVC, "repro", "evaluate"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode != 0 and "evaluate.rerank.k1" in proc.stdout + proc.stderr
    assert not (root / "artifacts/evaluate/lineage.json").exists(), (
        "a failed stage leaves no complete artifact"
    )
    assert "evaluate" in run(DVC, "status", cwd=root, env=env)
    params_file.write_text(good)
    run(DVC, "repro", "evaluate", cwd=root, env=env)
    assert (root / "artifacts/evaluate/lineage.json").is_file()


def test_dvc_push_pull_roundtrip_through_s3(project, s3_env):
    root, env = project
    env = {**env, **{k: v for k, v in s3_env.items() if k.startswith("AWS_")}}
    remote = f"s3://{s3_env['BUCKET']}/dvcstore"
    run(DVC, "remote", "add", "-f", "-d", "store", remote, cwd=root, env=env)
    run(DVC, "remote", "modify", "store", "endpointurl", s3_env["AWS_ENDPOINT_URL"], cwd=root, env=env)
    run(DVC, "push", cwd=root, env=env)
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "artifacts" / "models")
    run(DVC, "pull", cwd=root, env=env)
    assert (root / "artifacts/models/osnet_x0_25/model.safetensors").is_file()
    reidflow("lineage", "verify", "artifacts/evaluate", cwd=root, env=env)
