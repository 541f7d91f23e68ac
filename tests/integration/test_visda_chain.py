"""The VisDA chain's own DVC pipeline (pipelines/visda/dvc.yaml) on tiny data, two tiny backbones:
synth -> shard -> pretrain raw x 2 seeds -> SDA -> pretrain on the translations x 2 seeds -> MMT and MMT+
-> camera -> the ablation report; the report's lineage reaches every model and the raw data, and a
second `dvc repro` has nothing to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, TINY_DOMAIN, reidflow, write_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
DVC = str(Path(sys.executable).parent / "dvc")
BACKBONES = ["osnet_x0_25", "resnest26_x0_25"]


def tiny_visda_params() -> dict:
    """pipelines/visda/params.yaml with two tiny backbones and a few iterations per stage."""
    p = yaml.safe_load((REPO / "pipelines/visda/params.yaml").read_text())
    p["visda"].update({"backbones": BACKBONES, "sda_encoder": "osnet_x0_25"})
    p["visda"]["report"]["batch_size"] = 32
    tiny = {**TINY_DOMAIN, "distractors": 0}
    p["synth"] = {"seed": 0, "workers": 1, "domains": [
        {"preset": "personx_like", "overrides": tiny}, {"preset": "target_city", "overrides": tiny},
    ]}  # fmt: skip
    for section in ("pretrain", "camera"):
        s = p[section]
        s["sampler"] = {"kind": "identity", "P": 4, "K": 2}
        s["engine"] = {**s["engine"], "epochs": 1, "max_iters": 2, "checkpoint_every": 2, "log_every": 1}
        s["scheduler"] = {"kind": "constant", "warmup": 0}
    p["pretrain"]["target_bn"] = {"enabled": True, "batch_size": 8}
    p["camera"]["sampler"] = {"kind": "identity", "P": 3, "K": 4}  # classes: the 3 target cameras
    sda = p["sda"]  # 32x16 translation, 2 iterations: the chain, not the quality
    sda["transforms"] = {**sda["transforms"], "height": 32, "width": 16, "pad": 2}
    sda["generator"] = {"ngf": 4, "n_blocks": 1, "n_down": 2}
    sda["discriminator"] = {"ndf": 4, "n_layers": 2}
    sda["sampler"] = {"P": 3, "K": 2}
    sda["target_batch_size"] = 4
    sda["identity_warmup_iters"] = 1
    sda["loss"] = {**sda["loss"], "pool_size": 4}
    sda["schedule"] = {"constant_epochs": 1, "decay_epochs": 1}
    sda["engine"] = {**sda["engine"], "epochs": 2, "iters_per_epoch": 1, "log_every": 1}
    sda["samples"] = 2
    m = p["mmt"]
    m.update({"P": 4, "K": 2, "iters_per_epoch": 1, "feature_batch_size": 32})
    m["engine"] = {**m["engine"], "epochs": 2, "log_every": 1}
    m["method"] = {
        **m["method"],
        "moco_queue_size": 16,
        "cluster": {"k1": 6, "k2": 2, "eps": 0.7, "min_samples": 2},
    }
    return p


def run(*args: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=1100
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A git repo with the sources and pipelines/visda (tiny params), after `dvc repro` of the chain."""
    root = tmp_path_factory.mktemp("visda")
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pipelines/visda").mkdir(parents=True)
    shutil.copy(REPO / "pipelines/visda/dvc.yaml", root / "pipelines/visda/dvc.yaml")
    write_params(root / "pipelines/visda/params.yaml", tiny_visda_params())
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "REIDFLOW_NO_PROGRESS": "1",
        "OMP_NUM_THREADS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    run("git", "init", "-q", cwd=root, env=env)
    run("git", "add", "-A", cwd=root, env=env)
    run("git", "commit", "-qm", "tiny visda chain", cwd=root, env=env)
    run(DVC, "repro", "pipelines/visda/dvc.yaml", cwd=root, env=env)
    return root, env


def test_chain_writes_every_model_and_the_ablation_report(chain) -> None:
    root, _ = chain
    visda = root / "pipelines/visda/artifacts"
    for backbone in BACKBONES:
        for role in ("raw", "sda"):
            for seed in (0, 1):
                assert (visda / f"models/{role}/{backbone}-seed{seed}/model.safetensors").is_file()
        for role in ("mmt", "mmt_plus"):
            assert (visda / f"models/{role}/{backbone}/model.safetensors").is_file()
    report = visda / "report"
    assert (report / "report.md").is_file() and (report / "report.html").is_file()
    assert (report / "figures/ablations.png").stat().st_size > 1000
    metrics = json.loads((report / "metrics.json").read_text())
    scores = metrics["scores"]
    assert {m["role"] for m in scores["models"]} == {"raw", "sda", "mmt", "mmt_plus"}
    assert len(scores["models"]) == 2 * 2 * 2 + 2 * 2
    assert scores["ensemble"]["members"] == [f"{b}-mmt-plus" for b in BACKBONES]
    assert [s["step"] for s in scores["ensemble"]["steps"]] == [
        "no flip",
        "+ flip",
        "+ camera",
        "+ re-ranking",
    ]
    assert metrics["ablations"]["raw"]["osnet_x0_25"]["n"] == 2  # mean ± std over the two seeds
    text = (report / "report.md").read_text()
    for title in ("raw vs SDA pretraining", "MMT vs MMT+", "singles vs ensemble", "post-processing"):
        assert f"## {title}" in text


def test_report_lineage_reaches_every_model_and_the_raw_data(chain) -> None:
    root, _ = chain
    shown = reidflow("lineage", "show", "artifacts/report", cwd=root / "pipelines/visda").stdout
    for backbone in BACKBONES:
        for rel in (
            f"models/raw/{backbone}-seed0",
            f"models/sda/{backbone}-seed1",
            f"models/mmt_plus/{backbone}",
        ):
            assert rel in shown
    assert "artifacts/sda/generator" in shown and "models/camera" in shown
    assert "raw data data/synth/personx_like" in shown and "raw data data/synth/target_city" in shown
    reidflow("lineage", "verify", "artifacts/report", cwd=root / "pipelines/visda")


def test_second_repro_has_nothing_to_do(chain) -> None:
    root, env = chain
    out = run(DVC, "status", "pipelines/visda/dvc.yaml", cwd=root, env=env)
    assert "changed" not in out, out
