"""Drawing one pedestrian, as seen from the front, the back or the side, into an image.

Geometry is written in body units (``u`` across, ``v`` down, both as fractions of the person's
height, ``v = 0`` at the top of the head and ``1`` at the soles) and mapped to pixels by a
:class:`Placement`, so the same person renders at any output size and any crop misalignment.
What a viewpoint shows follows the garment: a backpack is a block on the back and two straps on the
chest; a shoulder bag hangs on the carrier's side, in front of or behind the body in side view;
hair covers the back of the head; a print is on the front of a shirt only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from reidflow.data.synth import draw
from reidflow.data.synth.identity import Colour, Identity

View = Literal["front", "back", "side"]
VIEWS: tuple[View, ...] = ("front", "back", "side")


@dataclass(frozen=True)
class Pose:
    """Per-image body configuration. ``facing`` (+1 right, -1 left) matters in side view only."""

    view: View
    facing: int = 1
    phase: float = 0.0
    stride: float = 0.08
    arm_swing: float = 0.06
    lean: float = 0.0


@dataclass(frozen=True)
class Placement:
    """Where the body lands in the crop: pixel x of its axis, pixel y of its soles, height in pixels."""

    centre_x: float
    feet_y: float
    height: float


def _darker(colour: Colour, factor: float) -> tuple[float, float, float]:
    return (colour[0] * factor, colour[1] * factor, colour[2] * factor)


class _Body:
    """Body-unit to pixel mapping plus the paint calls used by every view."""

    def __init__(self, image: np.ndarray, placement: Placement, lean: float) -> None:
        self.image = image
        self.scale = placement.height
        self.cx = placement.centre_x
        self.top = placement.feet_y - placement.height
        self.lean = lean

    def x(self, u: float, v: float = 0.5) -> float:
        # a lean tilts the body around the soles (v = 1)
        return self.cx + (u + self.lean * (1.0 - v)) * self.scale

    def y(self, v: float) -> float:
        return self.top + v * self.scale

    def length(self, units: float) -> float:
        return units * self.scale

    def capsule(self, ua: float, va: float, ub: float, vb: float, radius: float) -> draw.Shape:
        return draw.capsule(self.x(ua, va), self.y(va), self.x(ub, vb), self.y(vb), self.length(radius))

    def ellipse(self, u: float, v: float, ru: float, rv: float) -> draw.Shape:
        return draw.ellipse(self.x(u, v), self.y(v), self.length(ru), self.length(rv))

    def trapezoid(
        self,
        u: float,
        v_top: float,
        v_bottom: float,
        half_top: float,
        half_bottom: float,
        corner: float = 0.0,
    ) -> draw.Shape:
        v_mid = (v_top + v_bottom) / 2.0
        return draw.trapezoid(
            self.x(u, v_mid),
            self.y(v_top),
            self.y(v_bottom),
            self.length(half_top),
            self.length(half_bottom),
            self.length(corner),
        )

    def paint(self, shape: draw.Shape, fill: draw.Fill | Colour, opacity: float = 1.0) -> None:
        draw.paint(self.image, shape, fill if callable(fill) else draw.solid(fill), opacity)


def _garment_fill(
    body: _Body, base: Colour, second: Colour, pattern: str, period: float, u: float, half_width: float
) -> draw.Fill:
    """Pattern of a garment in pixel space; ``print`` is drawn separately as an emblem."""
    step = body.length(period)
    if pattern == "stripes":
        fill = draw.stripes(base, second, body.y(0.0), step)
    elif pattern == "checks":
        fill = draw.checks(base, second, body.x(u), body.y(0.0), step)
    else:
        fill = draw.solid(base)
    return draw.shaded(fill, body.x(u), body.length(half_width), 0.28)


def draw_person(image: np.ndarray, person: Identity, pose: Pose, placement: Placement) -> None:
    """Paint ``person`` into ``image`` (H, W, 3 float32 in [0, 1]) in place."""
    body = _Body(image, placement, pose.lean)
    # ground shadow first: it lies under everything
    body.paint(body.ellipse(0.0, 0.985, 0.17 * person.build, 0.02), (0.0, 0.0, 0.0), opacity=0.35)
    if pose.view == "side":
        _draw_side(body, person, pose)
    else:
        _draw_frontal(body, person, pose)


# ---------------------------------------------------------------- front and back
def _draw_frontal(body: _Body, person: Identity, pose: Pose) -> None:
    back = pose.view == "back"
    build = person.build
    shoulder, hip = 0.105 * build, 0.085 * build
    leg_r, arm_r = 0.034 * build, 0.025 * build
    swing = np.sin(pose.phase)
    # image side of the person's right hand: left in a front view, right in a back view
    right_side = 1 if back else -1

    if person.hair_length != "short" and not back:
        _hair_behind_head(body, person, u=0.0)
    _draw_legs_frontal(body, person, pose, hip, leg_r, swing)
    _paint_lower_garment_top(body, person, hip)
    torso = body.trapezoid(0.0, 0.165, 0.51, shoulder, hip, corner=0.035)
    body.paint(
        torso,
        _garment_fill(
            body,
            person.upper,
            person.upper_second,
            person.upper_pattern,
            person.pattern_period,
            0.0,
            shoulder,
        ),
    )
    if person.upper_pattern == "print" and not back:
        body.paint(body.ellipse(0.0, 0.3, 0.04 * build, 0.045), person.upper_second)
        body.paint(body.ellipse(0.0, 0.3, 0.018 * build, 0.02), _darker(person.upper, 0.6))
    if person.item == "backpack":
        if back:
            body.paint(
                body.trapezoid(0.0, 0.19, 0.45, 0.08 * build, 0.088 * build, corner=0.03),
                draw.shaded(draw.solid(person.item_colour), body.x(0.0), body.length(0.09 * build)),
            )
            body.paint(
                body.trapezoid(0.0, 0.19, 0.27, 0.08 * build, 0.082 * build, corner=0.03),
                _darker(person.item_colour, 0.72),
            )
        else:
            for side in (-1, 1):
                body.paint(
                    body.capsule(side * 0.06 * build, 0.17, side * 0.07 * build, 0.37, 0.012),
                    _darker(person.item_colour, 0.9),
                )
    for side in (-1, 1):
        reach = swing * side * 0.015 * pose.arm_swing / 0.06
        _draw_arm(
            body,
            person,
            shoulder_u=side * (shoulder - 0.018),
            hand_u=side * (shoulder + 0.012) + reach,
            hand_v=0.5,
            radius=arm_r,
        )
    if person.item == "bag":
        _draw_shoulder_bag(body, person, right_side * person.bag_side, shoulder, hip, strap=True)
    _draw_neck_and_head(body, person, u=0.0, view=pose.view, facing=0)
    if person.hair_length != "short" and back:
        length = 0.3 if person.hair_length == "long" else 0.2
        body.paint(body.trapezoid(0.0, 0.1, length, 0.05, 0.055 * build, corner=0.02), person.hair)


def _draw_legs_frontal(
    body: _Body, person: Identity, pose: Pose, hip: float, leg_r: float, swing: float
) -> None:
    for side in (-1, 1):
        lift = 0.025 * max(0.0, side * swing) * pose.stride / 0.08
        hip_u = side * (hip - leg_r) * 0.92
        foot_u = side * (hip - leg_r) * 0.8
        foot_v = 0.955 - lift
        _draw_leg(body, person, hip_u, foot_u, foot_v, leg_r)
        body.paint(body.ellipse(foot_u, foot_v + 0.015, 0.036, 0.02), person.shoes)


def _draw_leg(
    body: _Body, person: Identity, hip_u: float, foot_u: float, foot_v: float, radius: float, dim: float = 1.0
) -> None:
    lower = _darker(person.lower, dim)
    skin = _darker(person.skin, dim)
    if person.lower_kind == "trousers":
        body.paint(
            body.capsule(hip_u, 0.5, foot_u, foot_v, radius), _leg_fill(body, person, lower, hip_u, radius)
        )
        return
    body.paint(body.capsule(hip_u, 0.5, foot_u, foot_v, radius * 0.8), skin)
    if person.lower_kind == "shorts":
        knee_u, knee_v = hip_u + (foot_u - hip_u) * 0.45, 0.5 + (foot_v - 0.5) * 0.45
        body.paint(
            body.capsule(hip_u, 0.5, knee_u, knee_v, radius * 1.05),
            _leg_fill(body, person, lower, hip_u, radius),
        )


def _leg_fill(body: _Body, person: Identity, colour: Colour, u: float, radius: float) -> draw.Fill:
    fill = _garment_fill(
        body, colour, person.lower_second, person.lower_pattern, person.pattern_period, u, radius
    )
    if person.lower_pattern != "print":
        return fill
    # "print" on trousers: a side stripe down each leg
    stripe_x, stripe_half = body.x(u), max(body.length(radius * 0.25), 0.6)
    second = np.asarray(person.lower_second, dtype=np.float32)
    return lambda ys, xs: np.where((np.abs(xs - stripe_x) < stripe_half)[..., None], second, fill(ys, xs))


def _paint_lower_garment_top(body: _Body, person: Identity, hip: float) -> None:
    """Pelvis (trousers/shorts) or skirt, joining the legs to the torso."""
    if person.lower_kind == "skirt":
        shape = body.trapezoid(0.0, 0.46, 0.7, hip, hip * 1.45, corner=0.02)
        bottom = 1.45 * hip
    else:
        shape = body.trapezoid(0.0, 0.46, 0.58, hip, hip * 0.95, corner=0.02)
        bottom = hip
    body.paint(
        shape,
        _garment_fill(
            body, person.lower, person.lower_second, person.lower_pattern, person.pattern_period, 0.0, bottom
        ),
    )


def _draw_arm(
    body: _Body,
    person: Identity,
    shoulder_u: float,
    hand_u: float,
    hand_v: float,
    radius: float,
    dim: float = 1.0,
) -> None:
    skin, sleeve = _darker(person.skin, dim), _darker(person.upper, dim)
    shoulder_v = 0.195
    body.paint(body.capsule(shoulder_u, shoulder_v, hand_u, hand_v - 0.02, radius * 0.85), skin)
    if person.long_sleeves:
        body.paint(body.capsule(shoulder_u, shoulder_v, hand_u, hand_v - 0.035, radius), sleeve)
    else:
        elbow_u = shoulder_u + (hand_u - shoulder_u) * 0.45
        elbow_v = shoulder_v + (hand_v - shoulder_v) * 0.45
        body.paint(body.capsule(shoulder_u, shoulder_v, elbow_u, elbow_v, radius * 1.05), sleeve)
    body.paint(body.ellipse(hand_u, hand_v, radius * 0.95, radius * 1.1), skin)


def _draw_shoulder_bag(
    body: _Body, person: Identity, side: int, shoulder: float, hip: float, strap: bool
) -> None:
    """A cross-body bag hanging on image side ``side`` (+1 right)."""
    bag_u = side * (hip + 0.045)
    if strap:
        body.paint(
            body.capsule(-side * shoulder * 0.6, 0.18, bag_u - side * 0.02, 0.46, 0.009),
            _darker(person.item_colour, 0.8),
        )
    body.paint(
        body.trapezoid(bag_u, 0.44, 0.57, 0.045, 0.05, corner=0.015),
        draw.shaded(draw.solid(person.item_colour), body.x(bag_u), body.length(0.05), 0.25),
    )


def _hair_behind_head(body: _Body, person: Identity, u: float) -> None:
    length = 0.27 if person.hair_length == "long" else 0.19
    body.paint(body.trapezoid(u, 0.03, length, 0.062, 0.07, corner=0.03), _darker(person.hair, 0.85))


def _draw_neck_and_head(body: _Body, person: Identity, u: float, view: View, facing: int) -> None:
    body.paint(body.capsule(u, 0.12, u, 0.175, 0.022), _darker(person.skin, 0.85))
    head_u = u + 0.008 * facing
    rx, ry, hv = (0.056 if view == "side" else 0.051), 0.066, 0.075
    head = body.ellipse(head_u, hv, rx, ry)
    hair_cover = body.ellipse(head_u, hv - 0.004, rx + 0.006, ry + 0.004)
    if view == "back":
        # back of the head is hair, down to the nape
        body.paint(head, person.skin)
        body.paint(hair_cover.clipped(draw.above(body.y(0.125))), person.hair)
    elif view == "front":
        body.paint(head, draw.shaded(draw.solid(person.skin), body.x(head_u), body.length(rx), 0.2))
        body.paint(hair_cover.clipped(draw.above(body.y(0.045))), person.hair)
        # a hint of eyes: darker band across the face
        body.paint(body.ellipse(head_u, 0.075, rx * 0.6, 0.007), _darker(person.skin, 0.7), opacity=0.6)
    else:
        body.paint(head, person.skin)
        back_of_head = draw.beyond(body.x(head_u, hv) - facing * body.length(0.01), -facing)
        top = draw.above(body.y(0.045))
        hair_region = lambda ys, xs: np.minimum(back_of_head(ys, xs), top(ys, xs))
        body.paint(hair_cover.clipped(hair_region), person.hair)
    _draw_hat(body, person, head_u, hv, rx, ry, view, facing)


def _draw_hat(
    body: _Body, person: Identity, head_u: float, hv: float, rx: float, ry: float, view: View, facing: int
) -> None:
    if person.hat == "none":
        return
    if person.hat == "beanie":
        crown = body.ellipse(head_u, hv - 0.008, rx + 0.008, ry + 0.01).clipped(
            draw.above(body.y(hv - 0.008))
        )
        body.paint(crown, person.hat_colour)
        body.paint(
            body.trapezoid(head_u, hv - 0.018, hv - 0.004, rx + 0.007, rx + 0.007, corner=0.004),
            _darker(person.hat_colour, 0.8),
        )
        return
    crown = body.ellipse(head_u, hv - 0.01, rx + 0.006, ry + 0.004).clipped(draw.above(body.y(hv - 0.018)))
    body.paint(crown, person.hat_colour)
    if view == "front":
        body.paint(body.ellipse(head_u, hv - 0.02, rx + 0.012, 0.009), _darker(person.hat_colour, 0.75))
    elif view == "side":
        body.paint(
            body.ellipse(head_u + facing * (rx + 0.015), hv - 0.022, 0.035, 0.008),
            _darker(person.hat_colour, 0.75),
        )


# ---------------------------------------------------------------- side
def _draw_side(body: _Body, person: Identity, pose: Pose) -> None:
    d = pose.facing
    build = person.build
    depth = 0.066 * build
    leg_r, arm_r = 0.034 * build, 0.025 * build
    swing = np.sin(pose.phase)
    stride = pose.stride * swing
    arm = pose.arm_swing * swing
    bag_visible = person.item == "bag" and person.bag_side == d

    if person.hair_length != "short":
        _hair_behind_head(body, person, u=-d * 0.02)
    if person.item == "bag" and not bag_visible:
        _draw_shoulder_bag(body, person, side=d, shoulder=depth, hip=depth * 0.2, strap=False)
    # far limbs, dimmed
    _draw_arm(body, person, shoulder_u=0.0, hand_u=-arm, hand_v=0.49, radius=arm_r, dim=0.78)
    _draw_leg(body, person, 0.0, -stride, 0.955 - 0.02 * max(0.0, -swing), leg_r, dim=0.8)
    body.paint(
        body.ellipse(-stride + d * 0.02, 0.97 - 0.02 * max(0.0, -swing), 0.052, 0.02),
        _darker(person.shoes, 0.8),
    )
    _draw_leg(body, person, 0.0, stride, 0.955 - 0.02 * max(0.0, swing), leg_r)
    body.paint(body.ellipse(stride + d * 0.02, 0.97 - 0.02 * max(0.0, swing), 0.052, 0.02), person.shoes)
    if person.lower_kind == "skirt":
        body.paint(body.trapezoid(0.0, 0.46, 0.7, depth, depth * 1.5, corner=0.02), person.lower)
    else:
        body.paint(body.trapezoid(0.0, 0.46, 0.58, depth, depth * 0.95, corner=0.02), person.lower)
    if person.item == "backpack":
        pack_u = -d * (depth + 0.03)
        body.paint(body.trapezoid(pack_u, 0.2, 0.44, 0.04, 0.045, corner=0.02), person.item_colour)
    torso = body.trapezoid(0.0, 0.165, 0.51, depth, depth * 0.95, corner=0.035)
    body.paint(
        torso,
        _garment_fill(
            body, person.upper, person.upper_second, person.upper_pattern, person.pattern_period, 0.0, depth
        ),
    )
    if person.item == "backpack":
        body.paint(body.capsule(d * 0.015, 0.17, d * 0.02, 0.35, 0.01), _darker(person.item_colour, 0.85))
    _draw_arm(body, person, shoulder_u=0.0, hand_u=arm, hand_v=0.5, radius=arm_r)
    if bag_visible:
        _draw_shoulder_bag(body, person, side=0, shoulder=depth, hip=0.0, strap=False)
        body.paint(body.capsule(-d * 0.02, 0.18, 0.0, 0.44, 0.009), _darker(person.item_colour, 0.8))
    _draw_neck_and_head(body, person, u=d * 0.005, view="side", facing=d)
