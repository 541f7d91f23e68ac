"""The fixed scene a camera looks at, built once per camera from the domain's palette and texture.

A backdrop is twice as wide as a crop; each image takes a window of it, so crops of one camera
share a scene (as a fixed surveillance camera does) while people walk across it.
"""

from __future__ import annotations

import numpy as np

from reidflow.data.synth.spec import Background

BACKDROP_WIDTH_FACTOR = 2


def _colours(palette: list, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    picks = rng.integers(0, len(palette), size=count)
    return [np.asarray(palette[int(i)], dtype=np.float32) / 255.0 for i in picks]


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a small (h, w) grid to (height, width)."""
    gy = np.linspace(0, grid.shape[0] - 1, height, dtype=np.float32)
    gx = np.linspace(0, grid.shape[1] - 1, width, dtype=np.float32)
    y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
    y1, x1 = np.minimum(y0 + 1, grid.shape[0] - 1), np.minimum(x0 + 1, grid.shape[1] - 1)
    ty, tx = (gy - y0)[:, None], (gx - x0)[None, :]
    top = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x1] * tx
    bottom = grid[y1][:, x0] * (1 - tx) + grid[y1][:, x1] * tx
    return (top * (1 - ty) + bottom * ty).astype(np.float32)


def _wall(
    texture: str, base: np.ndarray, second: np.ndarray, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    if texture == "flat":
        shade = 1.0 + 0.04 * (ys - 0.5) + 0.0 * xs
        return base * shade[..., None]
    if texture == "gradient":
        t = np.clip(ys * float(rng.uniform(0.8, 1.2)) + 0.0 * xs, 0, 1)[..., None]
        return base * (1 - t) + second * t
    if texture == "noise":
        cell = max(4, height // 12)
        grid = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
        t = _upsample(grid, height, width)[..., None]
        fine = rng.random((height, width)).astype(np.float32)[..., None]
        return (base * (1 - t) + second * t) * (0.92 + 0.16 * fine)
    if texture == "stripes":
        edges = np.cumsum(rng.uniform(0.15, 0.6, size=64) * height)
        band = np.searchsorted(edges, xs[0]) % 2
        frame = (np.abs(xs[0] - edges[np.searchsorted(edges, xs[0])]) < 1.2).astype(np.float32)
        wall = np.where(band[None, :, None] == 0, base, second) * np.ones((height, 1, 1), np.float32)
        return wall * (1.0 - 0.35 * frame)[None, :, None]
    if texture == "bricks":
        brick_h = max(3.0, height / float(rng.uniform(10, 16)))
        brick_w = brick_h * float(rng.uniform(2.0, 3.0))
        row = np.floor(ys * height / brick_h)
        offset = (row % 2) * brick_w / 2
        column = np.floor((xs + offset) / brick_w)
        mortar = (((ys * height) % brick_h) < 1.0) | (((xs + offset) % brick_w) < 1.0)
        tint = 0.88 + 0.24 * ((row * 7 + column * 13) % 5) / 4.0
        wall = base * tint[..., None]
        return np.where(mortar[..., None], second * 0.8, wall)
    raise ValueError(f"unknown texture {texture!r}")


def camera_backdrop(background: Background, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, BACKDROP_WIDTH_FACTOR * width, 3) float32 scene: a textured wall above a floor."""
    scene_width = BACKDROP_WIDTH_FACTOR * width
    base, second, floor = _colours(background.palette, rng, 3)
    wall = _wall(background.texture, base, second, height, scene_width, rng)
    horizon = int(height * float(rng.uniform(0.6, 0.8)))
    depth = np.linspace(0.85, 1.05, height - horizon, dtype=np.float32)[:, None, None]
    wall[horizon:] = floor * 0.85 * depth
    wall[horizon : horizon + 1] *= 0.75
    return np.clip(wall, 0.0, 1.0).astype(np.float32)
