"""Smoke test of the built image (``make test-image``): what the pipeline runs, run inside the image.

``podman run`` cannot create containers on these machines (cgroups), so the test creates a container
from the image, mounts its (writable) filesystem and runs commands with ``chroot`` as the image's
user, with the image's environment and working directory: the CLI, compiling the pipeline, and a
tiny synth -> shard -> pretrain run through the KFP components (kfp.local inside the image).
Skipped unless ``REIDFLOW_TEST_IMAGE`` names a local image; with it set, a machine without podman or
root (mount, chroot) fails the tests instead of skipping them, so ``make test-image`` never writes its
stamp (docker/image-inputs.sha256) for a test that did not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

IMAGE = os.environ.get("REIDFLOW_TEST_IMAGE", "")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not IMAGE, reason="set REIDFLOW_TEST_IMAGE (make test-image builds and sets it)"),
]
TINY = {
    "identities": 8,
    "cameras": 3,
    "cameras_per_identity": [2, 2],
    "images_per_identity_camera": [2, 3],
    "distractors": 0,
    "image": {"height": 64, "width": 32},
}
PARAMS = {
    "synth": {
        "seed": 0,
        "workers": 1,
        "domains": [
            {"preset": "mall_warm", "overrides": TINY},
            {"preset": "night_station", "overrides": TINY},
        ],
    },
    "shard": {"shard_max_mb": 1},
    "datasets": {
        "mall_warm": {"reader": "market1501", "root": "data/synth/mall_warm", "role": "source"},
        "night_station": {"reader": "market1501", "root": "data/synth/night_station", "role": "target"},
    },
    "pretrain": {
        "model": {"backbone": "osnet_x0_25"},
        "transforms": {"height": 64, "width": 32},
        "sampler": {"P": 4, "K": 2},
        "engine": {"epochs": 1, "max_iters": 2, "device": "cpu"},
        "num_workers": 0,
        "eval": {"enabled": False},
    },
    "kfp": {"backbones": ["osnet_x0_25"]},
}


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Rootfs:
    path: Path
    env: dict[str, str]
    user: str
    workdir: str

    def run(self, *argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
        """``argv`` inside the image as its user; fails the test with the output when it fails."""
        command = ["chroot", f"--userspec={self.user}", str(self.path), "/usr/bin/env", "-i"]
        command += [f"{k}={v}" for k, v in self.env.items()]
        command += ["sh", "-c", 'cd "$0" && exec "$@"', self.workdir, *argv]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode == 0, f"{' '.join(argv)} failed in the image:\n{proc.stdout}\n{proc.stderr}"
        return proc


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Rootfs]:
    if shutil.which("podman") is None or os.geteuid() != 0:
        pytest.fail(f"REIDFLOW_TEST_IMAGE={IMAGE} is set but this needs podman and root (mount, chroot)")
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", IMAGE))
    container = podman("create", IMAGE)
    mounted: list[Path] = []
    try:
        path = Path(podman("mount", container))
        for source, target in (("/proc", "proc"), ("/dev", "dev")):  # torch and python need both
            (path / target).mkdir(exist_ok=True)
            subprocess.run(["mount", "--rbind", source, str(path / target)], check=True)
            mounted.append(path / target)
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        env.setdefault("OMP_NUM_THREADS", "1")
        yield Rootfs(path, env, config.get("User") or "0:0", config.get("WorkingDir") or "/")
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-R", str(target)], check=False)
        subprocess.run(["podman", "umount", container], check=False, capture_output=True)
        subprocess.run(["podman", "rm", "-f", container], check=False, capture_output=True)


def test_the_cli_runs_in_the_image(rootfs: Rootfs) -> None:
    out = rootfs.run("reidflow", "--help").stdout
    assert "pipeline" in out and "pretrain" in out
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Config.Labels}}", IMAGE))
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert rootfs.user.split(":")[0] not in ("0", "root"), "the image runs as a non-root user"


def test_the_pipeline_compiles_in_the_image(rootfs: Rootfs) -> None:
    work = rootfs.path / rootfs.workdir.lstrip("/")
    (work / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    shutil.chown(work / "params.yaml", *map(int, rootfs.user.split(":")))
    rootfs.run("reidflow", "pipeline", "compile", "--params", "params.yaml", "-o", "reid_pipeline.yaml")
    spec = next(yaml.safe_load_all((work / "reid_pipeline.yaml").read_text()))
    assert {"exec-synth", "exec-shard", "exec-pretrain", "exec-evaluate"} <= set(
        spec["deploymentSpec"]["executors"]
    )


def test_a_tiny_synth_shard_pretrain_run_in_the_image(rootfs: Rootfs) -> None:
    work = rootfs.path / rootfs.workdir.lstrip("/")
    if not (work / "params.yaml").exists():
        (work / "params.yaml").write_text(yaml.safe_dump(PARAMS))
        shutil.chown(work / "params.yaml", *map(int, rootfs.user.split(":")))
    out = rootfs.run(
        "reidflow", "pipeline", "run", "--local", "--isolated", "--until", "pretrain",
        "--params", "params.yaml", "--pipeline-root", "kfp-root",
    ).stdout  # fmt: skip
    produced = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    assert {"synth", "shard", "pretrain"} <= set(produced)
    model = rootfs.path / produced["pretrain"].lstrip("/")
    record = json.loads((model / "lineage.json").read_text())
    assert record["runtime"]["orchestrator"] == "kfp" and record["artifact"]["kind"] == "model"
