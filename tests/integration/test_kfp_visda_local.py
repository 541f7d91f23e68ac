"""The VisDA pipeline (pipelines/visda_pipeline.py) run end to end with kfp.local on tiny data, isolated
(every task as if in its own pod), with the DVC chain's tiny params: two tiny backbones, a few
iterations per stage. What the chain computes is checked by tests/integration/test_visda_chain.py;
here: every task ran, each model is named, seeded and wired as the DVC stages do it, and the report
reads every role and the camera model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pipelines.runner import run_local

from tests.helpers import REPO
from tests.integration.test_visda_chain import BACKBONES, tiny_visda_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def lineage(path: Path) -> dict[str, Any]:
    return json.loads((path / "lineage.json").read_text())


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tasks are subprocesses: they get the repository (components, pipelines) via PYTHONPATH."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("REIDFLOW_NO_PROGRESS", "1")
    torch.set_num_threads(1)
    return tmp_path


def test_local_visda_pipeline_run(workdir: Path) -> None:
    params = tiny_visda_params()
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_local(workdir / "params.yaml", workdir / "kfp-root", isolated=True, pipeline="visda")

    records = {task: [lineage(p) for p in paths] for task, paths in result.artifacts.items()}
    # by KFP task: the SDA encoder is `pretrain`; in the loop raw seed 0/1 are pretrain-2/-3, the nets
    # on the translations pretrain-4/-5, MMT mmt and MMT+ mmt-2
    per_backbone = ("pretrain-2", "pretrain-3", "pretrain-4", "pretrain-5", "mmt", "mmt-2")
    assert {t: len(r) for t, r in records.items()} == {
        "synth": 1, "shard": 2, "pretrain": 1, "sda-train": 1, "sda-translate": 1, "camera": 1,
        "visda-report": 1, **dict.fromkeys(per_backbone, 2),
    }  # fmt: skip
    for task, recs in records.items():
        for rec in recs:
            assert rec["runtime"]["orchestrator"] == "kfp" and rec["runtime"]["run_id"], task
    handed = [json.loads(p.read_text()) for p in result.run_dir.rglob("executor_output.json")]
    uris = re.findall(r'"uri": "([^"]+)"', json.dumps(handed))
    assert uris and all(u.startswith(str(result.run_dir)) for u in uris), "no pod path crosses a task"

    seeds = params["visda"]["seeds"]
    by_name = {r["params"]["name"]: r for t in per_backbone for r in records[t]}
    for backbone in BACKBONES:
        for role in ("raw", "sda"):
            for seed in seeds:
                rec = by_name[f"{backbone}-{role}-seed{seed}"]
                assert (rec["params"]["seed"], rec["params"]["model"]["backbone"]) == (seed, backbone)
        for name, mode in (("mmt", "mmt"), ("mmt-plus", "mmt+")):
            adapted = by_name[f"{backbone}-{name}"]
            assert adapted["params"]["method"]["mode"] == mode
            nets = [by_name[f"{backbone}-sda-seed{s}"]["artifact"]["digest"] for s in seeds]
            assert [i["digest"] for i in adapted["inputs"] if i["name"].startswith("model")] == nets
    # SDA once: the encoder is the raw seed-0 net of visda.sda_encoder, the loop's nets on the
    # translations read the translate task's output
    [encoder], [generator], [translated] = records["pretrain"], records["sda-train"], records["sda-translate"]
    assert encoder["params"]["name"] == f"{params['visda']['sda_encoder']}-raw-seed{seeds[0]}"
    assert {i["name"]: i["digest"] for i in generator["inputs"]}["source_model"] == encoder["artifact"][
        "digest"
    ]
    for rec in records["pretrain-4"] + records["pretrain-5"]:
        assert rec["inputs"][0]["digest"] == translated["artifact"]["digest"]

    # one report over every model of every role, with the camera correction
    [report] = records["visda-report"]
    models = [r for t in per_backbone for r in records[t]]
    assert {r["artifact"]["digest"] for r in [*models, *records["camera"]]} <= {
        i["digest"] for i in report["inputs"]
    }
    assert result.report is not None and result.report.is_file()
    scores = json.loads(result.metrics.read_text())["scores"]
    assert len(scores["models"]) == 2 * 2 * len(BACKBONES) + 2 * len(BACKBONES)
    assert scores["ensemble"]["members"] == [f"{b}-mmt-plus" for b in BACKBONES]
    assert [s["step"] for s in scores["ensemble"]["steps"]] == [
        "no flip",
        "+ flip",
        "+ camera",
        "+ re-ranking",
    ]
    task_dir = result.artifacts["visda-report"][0].parent
    outputs = json.loads((task_dir / "executor_output.json").read_text())["artifacts"]
    kfp_metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert kfp_metrics["ensemble.re_ranking.mAP"] == pytest.approx(scores["ensemble"]["steps"][-1]["mAP"])
    assert "data:image/png;base64," in (task_dir / "report_html").read_text()
