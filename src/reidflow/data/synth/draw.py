"""Anti-aliased vector shapes painted straight into a float RGB image with numpy.

Each shape is a signed distance function (negative inside, in pixels) plus its bounding box, so a
shape costs work only over the few pixels it can touch; coverage is ``clip(0.5 - distance, 0, 1)``,
which gives one pixel of anti-aliasing at any output size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Distance = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(ys column (n, 1), xs row (1, m)) -> signed distance (n, m)."""
Fill = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(ys, xs) -> colour per pixel (n, m, 3) or broadcastable to it."""


def _unit_clip(values: np.ndarray) -> np.ndarray:
    """``clip(values, 0, 1)`` in place with bare ufuncs (np.clip's wrapper dominates on small arrays)."""
    np.maximum(values, 0.0, out=values)
    return np.minimum(values, 1.0, out=values)


_PIXEL_CENTRES = np.arange(4096, dtype=np.float32) + 0.5


@dataclass(frozen=True)
class Shape:
    """A region given by a signed distance and the box ``(x0, y0, x1, y1)`` that contains it."""

    distance: Distance
    bounds: tuple[float, float, float, float]

    def clipped(self, inside: Distance) -> Shape:
        """The part of this shape where ``inside`` is negative (SDF intersection)."""
        own = self.distance
        return Shape(lambda ys, xs: np.maximum(own(ys, xs), inside(ys, xs)), self.bounds)


def ellipse(cx: float, cy: float, rx: float, ry: float) -> Shape:
    scale = min(rx, ry)

    def distance(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return (np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) - 1.0) * scale

    return Shape(distance, (cx - rx, cy - ry, cx + rx, cy + ry))


def capsule(ax: float, ay: float, bx: float, by: float, radius: float) -> Shape:
    """A segment from a to b thickened by ``radius`` (limbs, straps, poles)."""
    dx, dy = bx - ax, by - ay
    length2 = max(dx * dx + dy * dy, 1e-9)

    def distance(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        px, py = xs - ax, ys - ay
        t = _unit_clip((px * dx + py * dy) / length2)
        return np.sqrt((px - dx * t) ** 2 + (py - dy * t) ** 2) - radius

    bounds = (min(ax, bx) - radius, min(ay, by) - radius, max(ax, bx) + radius, max(ay, by) + radius)
    return Shape(distance, bounds)


def trapezoid(
    cx: float, top: float, bottom: float, half_top: float, half_bottom: float, corner: float = 0.0
) -> Shape:
    """A vertical box whose half width goes linearly from ``half_top`` to ``half_bottom``; rounded corners."""
    half_height = (bottom - top) / 2.0
    cy = (top + bottom) / 2.0
    corner = min(corner, half_height, half_top, half_bottom)

    def distance(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        t = _unit_clip((ys - top) / max(bottom - top, 1e-9))
        half_width = half_top + (half_bottom - half_top) * t
        qx = np.abs(xs - cx) - (half_width - corner)
        qy = np.abs(ys - cy) - (half_height - corner)
        outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0.0) - corner

    widest = max(half_top, half_bottom)
    return Shape(distance, (cx - widest, top, cx + widest, bottom))


def box(x0: float, y0: float, x1: float, y1: float, corner: float = 0.0) -> Shape:
    half = (x1 - x0) / 2.0
    return trapezoid((x0 + x1) / 2.0, y0, y1, half, half, corner)


def above(y: float) -> Distance:
    """Half plane of rows above ``y`` (for clipping)."""
    return lambda ys, xs: ys - y


def below(y: float) -> Distance:
    return lambda ys, xs: y - ys


def beyond(x: float, direction: int) -> Distance:
    """Half plane of columns on the ``direction`` side (+1 right, -1 left) of ``x``."""
    return lambda ys, xs: direction * (x - xs)


def solid(colour) -> Fill:
    rgb = np.asarray(colour, dtype=np.float32)
    return lambda ys, xs: rgb


def stripes(first, second, origin: float, period: float) -> Fill:
    a, b = np.asarray(first, dtype=np.float32), np.asarray(second, dtype=np.float32)
    period = max(period, 2.0)

    def fill(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        band = (np.floor((ys - origin) / period).astype(np.int64) % 2 == 0)[..., None]
        return np.where(band, a, b)

    return fill


def checks(first, second, origin_x: float, origin_y: float, period: float) -> Fill:
    a, b = np.asarray(first, dtype=np.float32), np.asarray(second, dtype=np.float32)
    period = max(period, 2.0)

    def fill(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        cell = np.floor((ys - origin_y) / period).astype(np.int64) + np.floor(
            (xs - origin_x) / period
        ).astype(np.int64)
        return np.where((cell % 2 == 0)[..., None], a, b)

    return fill


def shaded(fill: Fill, cx: float, half_width: float, strength: float = 0.3) -> Fill:
    """Darken towards the left/right edges of a rounded body part, so it reads as a volume."""

    def shaded_fill(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        u = np.minimum(((xs - cx) / max(half_width, 1e-6)) ** 2, 1.0)
        return fill(ys, xs) * (1.0 - strength * u)[..., None]

    return shaded_fill


def paint(image: np.ndarray, shape: Shape, fill: Fill, opacity: float = 1.0) -> None:
    """Composite ``fill`` over ``image`` (H, W, 3 float32) where ``shape`` covers it, in place."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = shape.bounds
    c0, c1 = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 2, width)
    r0, r1 = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 2, height)
    if c0 >= c1 or r0 >= r1:
        return
    ys = _PIXEL_CENTRES[r0:r1, None]
    xs = _PIXEL_CENTRES[None, c0:c1]
    alpha = _unit_clip(0.5 - shape.distance(ys, xs))
    if opacity != 1.0:
        alpha *= opacity
    window = image[r0:r1, c0:c1]
    window += alpha[..., None] * (fill(ys, xs) - window)
