"""Who is filmed by which camera how often, which split each crop lands in, and its Market-style name.

Market-1501 convention: train identities and test identities are disjoint; for each test identity,
``query_per_camera`` crops per camera go to ``query/`` and the rest to ``bounding_box_test/``; the
gallery also holds distractors with pid 0. File names are ``{pid:04d}_c{cam}s{seq}_{frame:06d}_{box:02d}``
with the camera 1-based.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from reidflow.data.synth.seeds import Stream, stream
from reidflow.data.synth.spec import DomainSpec, train_identity_count

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_NAME = re.compile(r"^(?P<pid>\d{4})_c(?P<cam>\d+)s(?P<seq>\d+)_(?P<frame>\d{6})_(?P<box>\d{2})\.jpg$")
SEQUENCES_PER_CAMERA = 6
DISTRACTOR_PID = 0


@dataclass(frozen=True)
class Shot:
    """One crop to render. ``camera`` is 0-based; the file name carries it 1-based."""

    pid: int
    camera: int
    seq: int
    frame: int
    box: int
    split: str

    @property
    def filename(self) -> str:
        return f"{self.pid:04d}_c{self.camera + 1}s{self.seq}_{self.frame:06d}_{self.box:02d}.jpg"

    @property
    def relpath(self) -> str:
        return f"{SPLIT_FOLDERS[self.split]}/{self.filename}"


@dataclass(frozen=True)
class IdentityPlan:
    """All crops of one identity (``pid >= 1``) or of one distractor (``pid == 0``, ``index`` = k)."""

    pid: int
    index: int
    shots: tuple[Shot, ...]


def _identity_shots(spec: DomainSpec, seed: int, pid: int, is_train: bool) -> tuple[Shot, ...]:
    rng = stream(seed, spec.name, Stream.PLAN, pid)
    low, high = spec.cameras_per_identity
    n_cameras = int(rng.integers(low, high + 1))
    cameras = np.sort(rng.choice(spec.cameras, size=n_cameras, replace=False))
    shots = []
    for camera in cameras:
        n_images = int(
            rng.integers(spec.images_per_identity_camera[0], spec.images_per_identity_camera[1] + 1)
        )
        seq = int(rng.integers(1, SEQUENCES_PER_CAMERA + 1))
        frames = int(rng.integers(0, 800_000)) + np.cumsum(rng.integers(4, 60, size=n_images))
        boxes = rng.integers(1, 4, size=n_images)
        queries = (
            set(rng.choice(n_images, size=spec.query_per_camera, replace=False).tolist())
            if not is_train
            else set()
        )
        for i in range(n_images):
            split = "train" if is_train else ("query" if i in queries else "gallery")
            shots.append(Shot(pid, int(camera), seq, int(frames[i]), int(boxes[i]), split))
    return tuple(shots)


def train_pids(spec: DomainSpec, seed: int) -> frozenset[int]:
    """A random (seeded) subset of pids ``1..identities`` of the size ``train_fraction`` asks for."""
    order = stream(seed, spec.name, Stream.SPLIT).permutation(spec.identities) + 1
    return frozenset(int(pid) for pid in order[: train_identity_count(spec)])


def plan_domain(spec: DomainSpec, seed: int) -> list[IdentityPlan]:
    """Plans for pids 1..N in order, then one single-crop plan per distractor."""
    train = train_pids(spec, seed)
    plans = [
        IdentityPlan(pid, pid, _identity_shots(spec, seed, pid, pid in train))
        for pid in range(1, spec.identities + 1)
    ]
    for k in range(spec.distractors):
        rng = stream(seed, spec.name, Stream.DISTRACTOR, k)
        camera = int(rng.integers(spec.cameras))
        seq = int(rng.integers(1, SEQUENCES_PER_CAMERA + 1))
        frame = 10 * k + int(rng.integers(10))  # unique per distractor, so names never collide
        box = int(rng.integers(1, 4))
        plans.append(
            IdentityPlan(DISTRACTOR_PID, k, (Shot(DISTRACTOR_PID, camera, seq, frame, box, "gallery"),))
        )
    return plans


def split_counts(plans: list[IdentityPlan]) -> dict[str, dict[str, int]]:
    """Images and identities per split folder, for the domain card."""
    counts: dict[str, dict[str, int]] = {}
    for split, folder in SPLIT_FOLDERS.items():
        shots = [shot for plan in plans for shot in plan.shots if shot.split == split]
        counts[folder] = {
            "images": len(shots),
            "identities": len({s.pid for s in shots if s.pid != DISTRACTOR_PID}),
        }
    counts["bounding_box_test"]["distractors"] = sum(1 for plan in plans if plan.pid == DISTRACTOR_PID)
    return counts
