"""Drawing: what each viewpoint shows, shared palettes, the camera colour pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reidflow.data.synth import load_preset
from reidflow.data.synth.identity import sample_identity
from reidflow.data.synth.render import Placement, Pose, draw_person
from reidflow.data.synth.scene import build_cameras, render_crop
from reidflow.data.synth.seeds import Stream, stream
from reidflow.data.synth.style import colour_transform, gaussian_blur

HEIGHT, WIDTH = 128, 64
PLACEMENT = Placement(centre_x=32.0, feet_y=124.0, height=110.0)
ITEM = (0.85, 0.1, 0.1)


def person(**changes):
    base = sample_identity(np.random.default_rng(5))
    fields = {"upper": (0.2, 0.55, 0.25), "upper_pattern": "solid", "item_colour": ITEM, "hat": "none"}
    fields.update(changes)
    return dataclasses.replace(base, **fields)


def render(identity, view: str, facing: int = 1) -> np.ndarray:
    canvas = np.full((HEIGHT, WIDTH, 3), 0.5, dtype=np.float32)
    draw_person(canvas, identity, Pose(view=view, facing=facing, phase=0.3), PLACEMENT)
    return canvas


def share_near(image: np.ndarray, colour, rows: slice) -> float:
    region = image[rows]
    return float((np.abs(region - np.asarray(colour, dtype=np.float32)).max(axis=-1) < 0.12).mean())


def body_rows(v_top: float, v_bottom: float) -> slice:
    top = PLACEMENT.feet_y - PLACEMENT.height
    return slice(int(top + v_top * PLACEMENT.height), int(top + v_bottom * PLACEMENT.height))


def test_backpack_is_seen_from_the_back_and_only_straps_from_the_front() -> None:
    carrier = person(item="backpack")
    front, back = render(carrier, "front"), render(carrier, "back")
    chest = body_rows(0.22, 0.42)
    assert share_near(back, ITEM, chest) > 0.08
    assert 0.0 < share_near(front, ITEM, chest) < share_near(back, ITEM, chest) / 3
    assert np.abs(front - back).mean() > 0.02
    # without the backpack the back view shows the shirt where the backpack was
    plain_back = render(person(item="none"), "back")
    assert share_near(plain_back, ITEM, chest) == 0.0


def test_back_of_the_head_is_hair() -> None:
    identity = person(hair=(0.1, 0.05, 0.02), skin=(0.9, 0.75, 0.6), hair_length="short")
    head = body_rows(0.03, 0.11)
    assert share_near(render(identity, "back"), identity.hair, head) > 2 * share_near(
        render(identity, "front"), identity.hair, head
    )


def test_shoulder_bag_shows_on_the_carriers_side_in_side_view() -> None:
    carrier = person(item="bag", bag_side=1)
    hip = body_rows(0.44, 0.58)
    near, far = render(carrier, "side", facing=1), render(carrier, "side", facing=-1)
    assert share_near(near, ITEM, hip) > 2 * share_near(far, ITEM, hip)


def test_shirt_print_is_on_the_front_only() -> None:
    printed = person(upper_pattern="print", upper_second=(0.95, 0.95, 0.2), item="none")
    chest = body_rows(0.25, 0.35)
    assert share_near(render(printed, "front"), printed.upper_second, chest) > 0.03
    assert share_near(render(printed, "back"), printed.upper_second, chest) == 0.0


def test_identities_share_palettes_so_one_colour_does_not_identify() -> None:
    people = [sample_identity(np.random.default_rng(i)) for i in range(300)]
    uppers = np.array([p.upper for p in people])
    distances = np.linalg.norm(uppers[:, None] - uppers[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (distances.min(axis=1) < 0.1).mean() > 0.95
    # but combinations of attributes differ
    combos = {(p.upper_pattern, p.lower_kind, p.item, p.hat, p.hair_length, p.long_sleeves) for p in people}
    assert len(combos) > 100


def test_identity_sampling_is_deterministic_per_stream() -> None:
    a = sample_identity(stream(3, "d", Stream.IDENTITY, 4))
    b = sample_identity(stream(3, "d", Stream.IDENTITY, 4))
    c = sample_identity(stream(3, "d", Stream.IDENTITY, 5))
    d = sample_identity(stream(3, "other", Stream.IDENTITY, 4))
    assert a == b and a != c and a != d


def test_render_crop_is_deterministic_and_uses_the_camera() -> None:
    spec = load_preset("night_station").model_copy(update={"cameras": 3, "cameras_per_identity": (2, 3)})
    cameras = build_cameras(spec, seed=0)
    identity = sample_identity(np.random.default_rng(1))
    first = render_crop(identity, cameras[0], spec, np.random.default_rng(9))
    again = render_crop(identity, cameras[0], spec, np.random.default_rng(9))
    other_camera = render_crop(identity, cameras[1], spec, np.random.default_rng(9))
    assert first.shape == (128, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other_camera.astype(int)).mean() > 2


def test_neutral_colour_transform_is_identity() -> None:
    matrix, offset = colour_transform((1, 1, 1), 0.0, 1.0, 1.0, 1.0)
    np.testing.assert_allclose(matrix, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(offset, 0.0, atol=1e-12)


def test_hue_rotation_by_120_degrees_cycles_the_channels() -> None:
    matrix, _ = colour_transform((1, 1, 1), 120.0, 1.0, 1.0, 1.0)
    np.testing.assert_allclose(matrix @ np.array([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-9)


def test_zero_saturation_makes_grey_and_contrast_pivots_on_mid_grey() -> None:
    grey, _ = colour_transform((1, 1, 1), 0.0, 0.0, 1.0, 1.0)
    out = grey @ np.array([0.9, 0.2, 0.4])
    assert np.ptp(out) < 1e-12
    flat, offset = colour_transform((1, 1, 1), 0.0, 1.0, 0.0, 1.0)
    np.testing.assert_allclose(flat @ np.array([0.9, 0.1, 0.3]) + offset, 0.5)


@pytest.mark.parametrize("sigma", [0.5, 1.5])
def test_gaussian_blur_keeps_mass_and_spreads_an_impulse(sigma: float) -> None:
    image = np.zeros((32, 16, 3), dtype=np.float32)
    image[16, 8] = 1.0
    blurred = gaussian_blur(image, sigma)
    np.testing.assert_allclose(blurred.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    assert blurred[16, 8, 0] < 1.0 and blurred[16, 9, 0] > 0.0
    constant = np.full((32, 16, 3), 0.3, dtype=np.float32)
    np.testing.assert_allclose(gaussian_blur(constant, sigma), 0.3, rtol=1e-5)
