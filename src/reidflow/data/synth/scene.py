"""One crop: a camera's backdrop, a pedestrian with pose and box misalignment, maybe an occluder,
then the camera's look and JPEG."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reidflow.data.synth import draw
from reidflow.data.synth.background import camera_backdrop
from reidflow.data.synth.identity import CLOTHES, Identity, sample_identity
from reidflow.data.synth.render import VIEWS, Placement, Pose, draw_person
from reidflow.data.synth.seeds import Stream, stream
from reidflow.data.synth.spec import DomainSpec
from reidflow.data.synth.style import CameraLook, apply_look, camera_look, encode_jpeg

PERSON_HEIGHT = 0.86
"""Height of an average person as a share of the crop height when the box is well aligned."""
FEET_Y = 0.965
PASSER_BY_VIEWS = np.array([0.4, 0.7, 1.0])
"""Cumulative front/back/side probabilities of an occluding passer-by."""


@dataclass(frozen=True)
class Camera:
    """Everything fixed for one camera of a domain."""

    look: CameraLook
    backdrop: np.ndarray
    view_cumulative: np.ndarray
    """Cumulative probabilities of front, back, side for this camera."""
    noise_bank: np.ndarray
    """Unit sensor noise twice the crop size; each image uses a random window of it (drawing fresh
    normals per image would cost as much as all the drawing)."""


def build_cameras(spec: DomainSpec, seed: int) -> list[Camera]:
    """Cameras depend only on (seed, domain name, camera index), never on who walks by."""
    cameras = []
    base_weights = np.array([spec.scene.views.front, spec.scene.views.back, spec.scene.views.side])
    for index in range(spec.cameras):
        rng = stream(seed, spec.name, Stream.CAMERA, index)
        look = camera_look(spec, rng)
        backdrop = camera_backdrop(spec.style.background, spec.image.height, spec.image.width, rng)
        # a fixed camera sees people walk mostly one way: bias the viewpoint mix per camera
        weights = base_weights * rng.uniform(0.4, 1.6, size=3)
        noise_bank = rng.standard_normal((2 * spec.image.height, 2 * spec.image.width, 3), dtype=np.float32)
        cameras.append(
            Camera(
                look=look,
                backdrop=backdrop,
                view_cumulative=np.cumsum(weights / weights.sum()),
                noise_bank=noise_bank,
            )
        )
    return cameras


def sample_pose(rng: np.random.Generator, view_cumulative: np.ndarray, jitter: float) -> Pose:
    """``view_cumulative``: cumulative probabilities of front, back, side."""
    view = VIEWS[min(int(np.searchsorted(view_cumulative, rng.random(), side="right")), len(VIEWS) - 1)]
    return Pose(
        view=view,
        facing=1 if rng.random() < 0.5 else -1,
        phase=float(rng.uniform(0.0, 2 * np.pi)),
        stride=0.08 * jitter * float(rng.uniform(0.5, 1.3)),
        arm_swing=0.06 * jitter * float(rng.uniform(0.4, 1.4)),
        lean=0.015 * jitter * float(rng.uniform(-1.0, 1.0)),
    )


def sample_placement(
    rng: np.random.Generator, person: Identity, height: int, width: int, misalignment: float
) -> Placement:
    """A detector's box is never exact: shift and scale the body inside the crop."""
    scale = 1.0 + misalignment * float(rng.uniform(-1.0, 1.0))
    return Placement(
        centre_x=width * (0.5 + misalignment * float(rng.uniform(-1.0, 1.0))),
        feet_y=height * (FEET_Y + 0.5 * misalignment * float(rng.uniform(-1.0, 1.0))),
        height=height * PERSON_HEIGHT * person.height * scale,
    )


def _draw_occluder(image: np.ndarray, rng: np.random.Generator, backdrop: np.ndarray, jitter: float) -> None:
    height, width = image.shape[:2]
    kind = int(rng.integers(3))
    if kind == 0:  # a pole or a pillar
        x = width * float(rng.uniform(0.1, 0.9))
        radius = width * float(rng.uniform(0.03, 0.08))
        colour = np.clip(backdrop[int(rng.integers(height)), int(rng.integers(width))] * 0.6 + 0.15, 0, 1)
        draw.paint(
            image,
            draw.box(x - radius, -2.0, x + radius, height + 2.0),
            draw.shaded(draw.solid(colour), x, radius, 0.45),
        )
    elif kind == 1:  # a barrier, a bench, a car bonnet
        top = height * float(rng.uniform(0.55, 0.8))
        span = width * float(rng.uniform(0.45, 1.1))
        x0 = -2.0 if rng.random() < 0.5 else width + 2.0 - span
        names = list(CLOTHES)
        colour = np.asarray(CLOTHES[names[int(rng.integers(len(names)))]][0], dtype=np.float32) / 255.0 * 0.8
        draw.paint(image, draw.box(x0, top, x0 + span, height + 2.0, corner=width * 0.04), draw.solid(colour))
    else:  # another pedestrian passing in front, cut by the crop's edge
        other = sample_identity(rng)
        side = -1 if rng.random() < 0.5 else 1
        centre = width * (0.5 + side * float(rng.uniform(0.55, 0.75)))
        placement = Placement(
            centre_x=centre,
            feet_y=height * float(rng.uniform(0.98, 1.1)),
            height=height * float(rng.uniform(0.9, 1.05)),
        )
        draw_person(image, other, sample_pose(rng, PASSER_BY_VIEWS, jitter), placement)


def render_crop(person: Identity, camera: Camera, spec: DomainSpec, rng: np.random.Generator) -> np.ndarray:
    """The uint8 (H, W, 3) picture of ``person`` by ``camera``; ``rng`` is consumed in a fixed order."""
    height, width = spec.image.height, spec.image.width
    pose = sample_pose(rng, camera.view_cumulative, spec.scene.pose_jitter)
    placement = sample_placement(rng, person, height, width, spec.scene.misalignment)
    left = int(rng.integers(0, camera.backdrop.shape[1] - width + 1))
    image = camera.backdrop[:, left : left + width].copy()
    draw_person(image, person, pose, placement)
    if rng.random() < spec.scene.occlusion_probability:
        _draw_occluder(image, rng, camera.backdrop, spec.scene.pose_jitter)
    jitter = spec.scene.illumination_jitter
    illumination = 1.0 + jitter * float(rng.uniform(-1.0, 1.0))
    top, left = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
    noise = camera.noise_bank[top : top + height, left : left + width]
    if rng.random() < 0.5:
        noise = -noise
    return apply_look(image, camera.look, noise, illumination)


def render_jpeg(person: Identity, camera: Camera, spec: DomainSpec, rng: np.random.Generator) -> bytes:
    return encode_jpeg(render_crop(person, camera, spec, rng), camera.look.jpeg_quality)
