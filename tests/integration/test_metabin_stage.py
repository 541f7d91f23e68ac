"""`reidflow metabin` on tiny synthetic data: the artifact, exact resume, single-source mode (cameras
as domains), clear config errors, and the stage under torchrun with 2 gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reidflow.models.artifact import load_model_artifact
from reidflow.models.norms import MetaBatchInstanceNorm2d, gate_parameters
from tests.helpers import reidflow, tiny_params, write_params

pytestmark = pytest.mark.integration
SOURCES = ("mall_warm", "night_station", "foggy_campus")
ENV = {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("metabin")
    params = tiny_params()
    small = params["synth"]["domains"][0]["overrides"]
    params["synth"]["domains"] = [{"preset": name, "overrides": small} for name in (*SOURCES, "target_city")]
    params["datasets"] = {
        name: {"reader": "market1501", "root": f"data/synth/{name}", "role": "source"} for name in SOURCES
    } | {"target_city": {"reader": "market1501", "root": "data/synth/target_city", "role": "target"}}
    params["metabin"]["meta"]["n_mtrain"] = 2
    write_params(root / "params.yaml", params)
    reidflow("synth", "--output", "data/synth", cwd=root, env=ENV)
    for name in (*SOURCES, "target_city"):
        reidflow("shard", "-d", name, "--output", f"artifacts/shards/{name}", cwd=root, env=ENV)
    return root


def _inputs(*names: str, target: bool = True) -> list[str]:
    args = [a for n in names for a in ("--input", f"source=artifacts/shards/{n}")]
    return args + (["--input", "target=artifacts/shards/target_city"] if target else [])


def test_metabin_artifact_gates_metrics_and_lineage(project):
    reidflow("metabin", "--output", "artifacts/models/mb", *_inputs(*SOURCES), cwd=project, env=ENV)
    out = project / "artifacts/models/mb"
    for name in ("model.safetensors", "model.json", "gates.json", "gates.png", "training_curve.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["iterations"] == 3
    assert {"ce", "triplet", "mtrain_scatter", "mtrain_shuffle", "mtrain_triplet", "mtest_triplet"} <= set(
        metrics["train"]["final"]
    )
    assert "cross_domain_mAP" in metrics["eval"] and "same_domain_mAP" in metrics["eval"]
    gates = json.loads((out / "gates.json").read_text())
    assert len(gates) == metrics["gates"]["layers"] > 0
    model, meta = load_model_artifact(out)
    assert meta["model"]["norm"] == "metabin"
    assert any(isinstance(m, MetaBatchInstanceNorm2d) for m in model.modules())
    rho = torch.cat([g.detach().flatten() for g in gate_parameters(model).values()])
    assert float(rho.min()) >= 0.0 and float(rho.max()) <= 1.0
    assert float(rho.min()) < 1.0, "the meta step moved some gate away from its initial 1"
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "metabin" and len(lineage["inputs"]) == 4
    assert lineage["params"]["transforms"]["erasing_p"] == 0.0
    reidflow("lineage", "verify", "artifacts/models/mb", cwd=project, env=ENV)
    assert not (project / "artifacts/models/mb.ckpt").exists(), "checkpoints are removed after success"


def test_resume_continues_exactly(project):
    """Interrupted at iteration 2 and resumed to 4 gives the bytes of an uninterrupted 4-iteration run
    (with base and meta batches decoded ahead by a loader worker, as on a GPU machine)."""
    common = [
        *_inputs(*SOURCES, target=False),
        "--set",
        "metabin.eval.enabled=false",
        "--set",
        "metabin.num_workers=1",
    ]
    reidflow("metabin", "--output", "artifacts/models/full", *common, "--set", "metabin.engine.max_iters=4",
             cwd=project, env=ENV)  # fmt: skip
    part = [*common, "--set", "metabin.keep_checkpoints=true"]
    reidflow("metabin", "--output", "artifacts/models/cut", *part, "--set", "metabin.engine.max_iters=2",
             cwd=project, env=ENV)  # fmt: skip
    reidflow("metabin", "--output", "artifacts/models/cut", *part, "--set", "metabin.engine.max_iters=4",
             "--resume", cwd=project, env=ENV)  # fmt: skip
    full = (project / "artifacts/models/full/model.safetensors").read_bytes()
    assert (project / "artifacts/models/cut/model.safetensors").read_bytes() == full


def test_single_source_mode_uses_cameras_as_domains(project):
    reidflow(
        "metabin",
        "--output",
        "artifacts/models/single",
        *_inputs("mall_warm", target=False),
        "--set",
        "metabin.meta_batch.domains=camera",
        cwd=project,
        env=ENV,
    )
    model_json = json.loads((project / "artifacts/models/single/model.json").read_text())
    assert model_json["meta_domains"] == ["mall_warm/c0", "mall_warm/c1", "mall_warm/c2"]


def test_config_errors_name_the_parameter(project):
    proc = reidflow("metabin", "--output", "artifacts/models/bad", *_inputs(*SOURCES),
                    "--set", "metabin.model.norm=bn", cwd=project, env=ENV, check=False)  # fmt: skip
    assert proc.returncode != 0 and "model.norm='bn'" in proc.stderr and "metabin" in proc.stderr
    proc = reidflow("metabin", "--output", "artifacts/models/bad", *_inputs("mall_warm", "night_station"),
                    cwd=project, env=ENV, check=False)  # fmt: skip
    assert proc.returncode != 0 and "meta.n_mtrain=2 needs at least 3 domains" in proc.stderr
    assert "domains=camera" in proc.stderr
    proc = reidflow("metabin", "--output", "artifacts/models/bad", *_inputs(*SOURCES),
                    "--set", "metabin.meta_batch.ids_per_domain=1", cwd=project, env=ENV, check=False)  # fmt: skip
    assert proc.returncode != 0 and "metabin.meta_batch.ids_per_domain=1 with 1 process(es)" in proc.stderr
    assert not (project / "artifacts/models/bad").exists(), "nothing half-written"


def test_metabin_under_torchrun_two_gloo_processes(project):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "reidflow.cli", "metabin", "--output", "artifacts/models/ddp", *_inputs(*SOURCES, target=False),
        "--set", "metabin.engine.device=cpu", "--set", "metabin.eval.enabled=false",
        "--set", "metabin.meta_batch.ids_per_domain=4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=project, env=ENV, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stderr
    metrics = json.loads((project / "artifacts/models/ddp/metrics.json").read_text())
    assert metrics["train"]["iterations"] == 3
