"""A camera's image formation: colour transform, blur, sensor noise and JPEG encoding.

Gain, hue rotation, saturation, contrast and brightness are all linear in RGB, so a camera's whole
colour look is one 3x3 matrix and an offset, applied once per image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from reidflow.data.synth.spec import DomainSpec, Style

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass(frozen=True)
class CameraLook:
    """The resolved style of one camera: ``out = in @ matrix.T + offset``, then blur, noise, JPEG."""

    matrix: np.ndarray
    offset: np.ndarray
    blur_sigma: float
    noise_std: float
    jpeg_quality: int


def colour_transform(
    gain, hue_degrees: float, saturation: float, contrast: float, brightness: float
) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset of: per-channel gain, hue rotation about the grey axis, saturation (blend
    with luma), contrast about mid-grey 0.5, brightness (exposure multiplier)."""
    gain_matrix = np.diag(np.asarray(gain, dtype=np.float64))
    theta = np.deg2rad(hue_degrees)
    axis = np.ones(3) / np.sqrt(3.0)
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    hue = np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * np.outer(axis, axis)
    sat = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), LUMA)
    matrix = brightness * contrast * (sat @ hue @ gain_matrix)
    offset = np.full(3, brightness * 0.5 * (1.0 - contrast))
    return matrix, offset


def camera_look(spec: DomainSpec, rng: np.random.Generator) -> CameraLook:
    """Perturb the domain style by the spec's ``camera_variation`` ranges (fixed draw order)."""
    style: Style = spec.style
    var = spec.camera_variation

    def around(value: float, jitter: float) -> float:
        return value * float(rng.uniform(1.0 - jitter, 1.0 + jitter))

    gain = [around(g, var.gain_jitter) for g in style.gain]
    brightness = around(style.brightness, var.brightness_jitter)
    contrast = around(style.contrast, var.contrast_jitter)
    saturation = around(style.saturation, var.saturation_jitter)
    hue = style.hue_shift + float(rng.uniform(-var.hue_jitter, var.hue_jitter))
    blur = style.blur_sigma + float(rng.uniform(0.0, var.blur_jitter))
    noise = style.noise_std + float(rng.uniform(0.0, var.noise_jitter))
    quality = style.jpeg_quality - int(rng.integers(0, var.jpeg_quality_jitter + 1))
    matrix, offset = colour_transform(gain, hue, saturation, contrast, brightness)
    return CameraLook(
        matrix=matrix.astype(np.float32),
        offset=offset.astype(np.float32),
        blur_sigma=blur,
        noise_std=noise,
        jpeg_quality=int(np.clip(quality, 5, 100)),
    )


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float image with edge padding."""
    if sigma < 0.15:
        return image.copy()
    radius = max(1, int(np.ceil(3.0 * sigma)))
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    height, width = image.shape[:2]
    rows = np.clip(np.arange(-radius, height + radius), 0, height - 1)
    padded = image[rows]
    vertical = kernel[0] * padded[0:height]
    for i in range(1, len(kernel)):
        vertical += kernel[i] * padded[i : i + height]
    columns = np.clip(np.arange(-radius, width + radius), 0, width - 1)
    padded = vertical[:, columns]
    out = kernel[0] * padded[:, 0:width]
    for i in range(1, len(kernel)):
        out += kernel[i] * padded[:, i : i + width]
    return out


def apply_look(
    image: np.ndarray, look: CameraLook, noise: np.ndarray | None = None, illumination: float = 1.0
) -> np.ndarray:
    """Scene radiance (H, W, 3 float32 in [0, 1]) -> the camera's uint8 picture.

    ``noise`` is unit-variance sensor noise of the image's shape, scaled here by ``look.noise_std``.
    """
    height, width = image.shape[:2]
    flat = image.reshape(-1, 3) @ (look.matrix * np.float32(illumination)).T + look.offset
    out = gaussian_blur(flat.reshape(height, width, 3), look.blur_sigma)
    if noise is not None and look.noise_std > 0:
        out += noise * np.float32(look.noise_std)
    out *= 255.0
    out += 0.5
    np.maximum(out, 0.0, out=out)
    np.minimum(out, 255.0, out=out)
    return out.astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG with fixed options (4:2:0, no optimisation, no metadata): same pixels, same bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, format="JPEG", quality=int(quality), subsampling=2, optimize=False, progressive=False
    )
    return buffer.getvalue()
