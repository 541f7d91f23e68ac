"""Shared test helpers: tiny params and running the CLI in-process."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


TINY_DOMAIN = {
    "identities": 10,
    "cameras": 3,
    "cameras_per_identity": [2, 3],
    "distractors": 4,
    "images_per_identity_camera": [2, 3],
    "image": {"height": 64, "width": 32},
}
"""Synth overrides for a domain of seconds: 10 identities over 3 cameras at 64x32."""


def tiny_params(data_root: str = "data/synth", all_domains: bool = False) -> dict[str, Any]:
    """params.yaml shrunk to seconds: few identities, 64x32 images, few iterations.

    Domains: 2 sources + the target, or (``all_domains``) every dataset of the repo's params.yaml,
    which dvc.yaml names explicitly.
    """
    p = copy.deepcopy(repo_params())
    small = copy.deepcopy(TINY_DOMAIN)
    names = list(p["datasets"]) if all_domains else ["mall_warm", "night_station", "target_city"]
    p["synth"] = {
        "seed": 0,
        "workers": 1,
        "domains": [{"preset": name, "overrides": small} for name in names],
    }
    p["datasets"] = {
        name: {
            "reader": "market1501",
            "root": f"{data_root}/{name}",
            "role": "target" if name == "target_city" else "source",
        }
        for name in names
    }
    for section in ("pretrain", "camera"):
        s = p[section]
        s["transforms"] = {**s["transforms"], "height": 64, "width": 32}
        s["sampler"] = {"kind": "identity", "P": 4, "K": 2}
        s["engine"] = {**s["engine"], "epochs": 1, "max_iters": 3, "checkpoint_every": 2, "log_every": 1}
        s["scheduler"] = {"kind": "constant", "warmup": 0}
        s["num_workers"] = 0
    m = p["metabin"]
    m["transforms"] = {**m["transforms"], "height": 64, "width": 32}
    m["sampler"] = {"P": 4, "K": 2}
    m["meta_batch"] = {"ids_per_domain": 2, "K": 2, "domains": "dataset"}
    m["meta"] = {**m["meta"], "n_mtrain": 1, "warmup_iters": 1}  # two sources; a base-only step, then meta
    m["engine"] = {**m["engine"], "epochs": 1, "max_iters": 3, "checkpoint_every": 2, "log_every": 1}
    m["scheduler"] = {"kind": "constant", "warmup": 0}
    m["num_workers"] = 0
    mmt = p["mmt"]  # 2 epochs of 1 iteration: the wiring, not the quality
    mmt.update({"P": 4, "K": 2, "iters_per_epoch": 1, "feature_batch_size": 32, "num_workers": 0})
    mmt["engine"] = {**mmt["engine"], "epochs": 2, "log_every": 1}
    mmt["method"] = {
        **mmt["method"],
        "moco_queue_size": 16,
        "cluster": {"k1": 6, "k2": 2, "eps": 0.7, "min_samples": 2},
    }
    p["pretrain"]["target_bn"] = {"enabled": True, "batch_size": 8}
    p["camera"]["sampler"] = {"kind": "identity", "P": 3, "K": 4}  # classes are the 3 target cameras
    p["evaluate"]["report"] = {**p["evaluate"]["report"], "embedding": "pca", "retrieval_queries": 3}
    p["evaluate"]["batch_size"] = 32
    return p


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def reidflow(
    *args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the real ``reidflow`` console script of this venv."""
    exe = Path(sys.executable).parent / "reidflow"
    proc = subprocess.run(
        [str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"reidflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
