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

# the module fixture runs the whole pipeline (15 stages, SDA included) once: minutes on 2 busy cores
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
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
    sda = params["sda"]  # 32x16 translation, 2 iterations: the chain, not the quality
    sda["transforms"] = {**sda["transforms"], "height": 32, "width": 16, "pad": 2}
    sda["generator"] = {"ngf": 4, "n_blocks": 1, "n_down": 2}
    sda["discriminator"] = {"ndf": 4, "n_layers": 2}
    sda["sampler"] = {"P": 3, "K": 2}
    sda["target_batch_size"] = 4
    sda["identity_warmup_iters"] = 1  # one warm-up iteration, then the full objective
    sda["loss"] = {**sda["loss"], "pool_size": 4}
    sda["schedule"] = {"constant_epochs": 1, "decay_epochs": 1}
    sda["engine"] = {**sda["engine"], "epochs": 2, "iters_per_epoch": 1, "log_every": 1}
    sda["samples"] = 2
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
    run("git", "add", "-A", cwd=root, env=env)
    run("git", "commit", "-qm", "tiny project", cwd=root, env=env)
    run(DVC, "repro", cwd=root, env=env)
    return root, env


def test_repro_builds_every_stage_and_is_up_to_date(project):
    root, env = project
    for rel in (
        "data/synth",
        "artifacts/shards/personx_like",
        "artifacts/models/osnet_x0_25",
        "artifacts/models/mobilenetv2_x0_5",
        "artifacts/models/camera",
        "artifacts/models/osnet_x0_25-metabin",
        "artifacts/sda/generator",
        "artifacts/sda/translated",
        "artifacts/models/osnet_x0_25-sda",
        "artifacts/models/osnet_x0_25-seed1",
        "artifacts/models/osnet_x0_25-mmt",
        "artifacts/models/mobilenetv2_x0_5-mmt",
        "artifacts/evaluate",
    ):
        assert (root / rel / "lineage.json").is_file(), rel
    # the SDA chain: raw pretrain (both encoders) -> generator -> translated sources -> pretrain -> ensemble
    records = {
        name: json.loads((root / rel / "lineage.json").read_text())
        for name, rel in (
            ("raw", "artifacts/models/osnet_x0_25"),
            ("gen", "artifacts/sda/generator"),
            ("translated", "artifacts/sda/translated"),
            ("sda", "artifacts/models/osnet_x0_25-sda"),
            ("evaluate", "artifacts/evaluate"),
        )
    }
    digest = {name: rec["artifact"]["digest"] for name, rec in records.items()}
    gen_inputs = {i["name"]: i["digest"] for i in records["gen"]["inputs"]}
    assert gen_inputs["source_model"] == gen_inputs["target_model"] == digest["raw"]
    assert len(records["gen"]["inputs"]) == 5 + 1 + 2 and records["gen"]["stage"] == "sda-train"
    assert records["translated"]["inputs"][0]["digest"] == digest["gen"]
    assert len(records["translated"]["inputs"]) == 1 + 5
    assert records["sda"]["inputs"][0]["digest"] == digest["translated"]
    assert records["sda"]["params"]["name"] == "osnet_x0_25-sda"
    assert digest["sda"] in {i["digest"] for i in records["evaluate"]["inputs"]}
    summary = json.loads((root / "artifacts/evaluate/metrics.json").read_text())["summary"]
    assert "osnet_x0_25-sda" in summary["target_city"]
    assert {"osnet_x0_25-mmt", "mobilenetv2_x0_5-mmt"} <= set(summary["target_city"])
    mmt = json.loads((root / "artifacts/models/osnet_x0_25-mmt/lineage.json").read_text())
    seed1 = json.loads((root / "artifacts/models/osnet_x0_25-seed1/lineage.json").read_text())
    assert mmt["stage"] == "mmt@osnet_x0_25" and seed1["params"]["seed"] == 1
    assert [i["digest"] for i in mmt["inputs"]][:2] == [digest["raw"], seed1["artifact"]["digest"]]
    metabin = json.loads((root / "artifacts/models/osnet_x0_25-metabin/lineage.json").read_text())
    assert metabin["stage"] == "metabin" and len(metabin["inputs"]) == 6  # 5 sources + the unseen target
    lineage = json.loads((root / "artifacts/models/osnet_x0_25/lineage.json").read_text())
    assert lineage["runtime"]["orchestrator"] == "dvc" and lineage["stage"] == "pretrain@osnet_x0_25"
    assert "up to date" in run(
        DVC, "status", cwd=root, env=env
    ) or "Data and pipelines are up to date" in run(DVC, "status", cwd=root, env=env)
    synth = json.loads((root / "data/synth/lineage.json").read_text())
    assert synth["stage"] == "synth" and synth["runtime"]["orchestrator"] == "dvc"
    shown = reidflow("lineage", "show", "artifacts/evaluate", cwd=root, env=env).stdout
    assert "synth" in shown  # the ancestry reaches the synthetic data through the synth stage
    reidflow("lineage", "verify", "artifacts/evaluate", cwd=root, env=env)


def test_metrics_and_plots_show(project):
    root, env = project
    metrics = run(DVC, "metrics", "show", "--json", cwd=root, env=env)
    data = json.loads(metrics)
    flat = json.dumps(data)
    assert "cross_domain_mAP" in flat and "summary" in flat
    out = run(DVC, "plots", "show", "--json", cwd=root, env=env)
    assert "cmc_target_city_ensemble" in out and "training_curve.json" in out
    [sda_plot] = json.loads(out)["data"]["SDA translation loss"]
    rows = sda_plot["content"]["data"]["values"]
    assert rows and {"g_gan", "cycle", "identity", "relation", "d_s", "d_t"} <= set(rows[0])


def stage_runs(out: str) -> list[str]:
    return sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '"))


def test_identical_rerun_leaves_downstream_cached(project):
    """A forced rerun rewrites lineage.json (new timestamps) but the same payload: nothing downstream reruns."""
    root, env = project
    before = (root / "artifacts/shards/target_city/lineage.json").read_text()
    assert stage_runs(run(DVC, "repro", "-f", "-s", "synth", cwd=root, env=env)) == ["synth"]
    assert stage_runs(run(DVC, "repro", "-f", "-s", "shard@target_city", cwd=root, env=env)) == [
        "shard@target_city"
    ]
    assert (root / "artifacts/shards/target_city/lineage.json").read_text() != before  # really rerun
    status = run(DVC, "status", cwd=root, env=env)
    assert "up to date" in status, status
    assert stage_runs(run(DVC, "repro", cwd=root, env=env)) == []
    # a model stage: bit-reproducible training, timing kept in lineage.json -> evaluate stays cached
    model = root / "artifacts/models/camera"
    weights, lineage = (model / "model.safetensors").read_bytes(), (model / "lineage.json").read_text()
    assert stage_runs(run(DVC, "repro", "-f", "-s", "camera", cwd=root, env=env)) == ["camera"]
    assert (model / "model.safetensors").read_bytes() == weights
    assert (model / "lineage.json").read_text() != lineage
    assert "timing" in json.loads((model / "lineage.json").read_text())["runtime"]
    assert stage_runs(run(DVC, "repro", cwd=root, env=env)) == ["model-digests"]
    reidflow("lineage", "verify", "artifacts/evaluate", cwd=root, env=env)
    # a model with single-model consumers (mmt, sda-train): only the digests stages after it run
    assert stage_runs(run(DVC, "repro", "-f", "-s", "pretrain@osnet_x0_25", cwd=root, env=env)) == [
        "pretrain@osnet_x0_25"
    ]
    assert stage_runs(run(DVC, "repro", cwd=root, env=env)) == [
        "backbone-digests@osnet_x0_25",
        "model-digests",
    ]
    for consumer in ("artifacts/models/osnet_x0_25-mmt", "artifacts/sda/generator"):
        reidflow("lineage", "verify", consumer, cwd=root, env=env)


def test_exp_run_with_a_synth_param_regenerates_the_data(project):
    """synth is a stage: `dvc exp run -S synth.*` regenerates the domains and everything after them."""
    root, env = project
    run("git", "add", "-A", cwd=root, env=env)
    run("git", "commit", "-qm", "lock", "--allow-empty", cwd=root, env=env)
    out = run(DVC, "exp", "run", "-S", "synth.seed=1", cwd=root, env=env)
    ran = stage_runs(out)
    assert "synth" in ran and "shard@mall_warm" in ran and "evaluate" in ran, out
    assert json.loads((root / "data/synth/lineage.json").read_text())["seed"] == 1
    # back to the committed experiment for the tests that follow
    run("git", "checkout", "-q", "--", "params.yaml", "dvc.lock", cwd=root, env=env)
    run(DVC, "checkout", "-q", cwd=root, env=env)
    assert "up to date" in run(DVC, "status", cwd=root, env=env)


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
