"""CycleGAN's losses (least-squares GAN, cycle and identity L1) and its pool of past fakes.

All image losses work on whatever space the images are in; SDA computes them on normalized images
(docs/methods/sda.md). The discriminator's loss is ``0.5 · (real + fake)``, as in the public code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from reidflow.errors import ConfigError


def lsgan_loss(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean squared distance of the discriminator's patch scores to 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def discriminator_loss(real_prediction: torch.Tensor, fake_prediction: torch.Tensor) -> torch.Tensor:
    """``0.5 · (LSGAN(real, 1) + LSGAN(fake, 0))``."""
    return 0.5 * (lsgan_loss(real_prediction, True) + lsgan_loss(fake_prediction, False))


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``|G_ba(G_ab(a)) - a|_1`` (mean over pixels)."""
    return F.l1_loss(reconstructed, original)


def identity_loss(mapped: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``|G_ab(b) - b|_1``: a generator fed an image of its output domain should leave it alone."""
    return F.l1_loss(mapped, original)


class ImagePool:
    """Up to ``size`` past generated images (Shrivastava et al. 2017, as used by CycleGAN).

    While not full, every query image is stored and returned. Once full, each image is, with
    probability 0.5, swapped with a random stored one (the stored one is returned), else returned
    itself. The draws come from the pool's own generator, seeded at construction, and the pool's
    whole state (images, fill, generator) goes through :meth:`state_dict`, so a resumed run
    returns the same images. ``size = 0`` disables the pool.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        if size < 0:
            raise ConfigError(f"ImagePool: size must be >= 0, got {size}")
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)
        self.images: torch.Tensor | None = None  # size × C × H × W once the first image arrives
        self.count = 0

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """The batch to show the discriminator instead of ``images`` (detached)."""
        images = images.detach()
        if self.size == 0:
            return images
        if self.images is None:
            self.images = images.new_zeros((self.size, *images.shape[1:]))
        if self.images.shape[1:] != images.shape[1:]:
            raise ConfigError(
                f"ImagePool: images of shape {tuple(images.shape[1:])} do not match the pool's "
                f"{tuple(self.images.shape[1:])}"
            )
        self.images = self.images.to(images.device, images.dtype)
        out = []
        for image in images:
            if self.count < self.size:
                self.images[self.count] = image
                self.count += 1
                out.append(image)
                continue
            draw = torch.rand((), generator=self.generator)
            if float(draw) > 0.5:
                slot = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "size": self.size,
            "count": self.count,
            "generator": self.generator.get_state(),
        }
        if self.images is not None:
            state["images"] = self.images[: self.count].detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ConfigError(f"ImagePool: checkpoint pool size {state['size']} != configured {self.size}")
        self.count = int(state["count"])
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
        stored = state.get("images")
        if stored is None or self.count == 0:
            self.images = None
            self.count = 0
            return
        stored = torch.as_tensor(stored)
        self.images = stored.new_zeros((self.size, *stored.shape[1:]))
        self.images[: self.count] = stored
