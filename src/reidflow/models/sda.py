"""The GAN networks of SDA translation: a ResNet generator and a PatchGAN discriminator (docs/methods/sda.md).

Both live in the *normalized* image space of the re-ID pipeline: the generator takes an image
normalized with ``mean``/``std`` (what the data pipeline feeds every model) and returns one in the
same space. Its last layer is a sigmoid (a [0, 1] image) followed by that normalization, as in the
public SDA code, so a translated batch can go straight into a re-ID encoder.

Networks are built by name, like backbones: ``build_gan_network("resnet_generator", ngf=64, ...)``;
``list_gan_networks()`` lists them. Weights start from N(0, 0.02) (:func:`init_gan_weights`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field
from torch import nn

from reidflow.config import StrictModel
from reidflow.errors import ConfigError

GanBuilder = Callable[..., nn.Module]
_NETWORKS: dict[str, GanBuilder] = {}


def register_gan_network(name: str) -> Callable[[GanBuilder], GanBuilder]:
    """Decorator: make ``build_gan_network(name, ...)`` call the decorated builder."""

    def decorate(builder: GanBuilder) -> GanBuilder:
        if name in _NETWORKS:
            raise ConfigError(f"GAN network {name!r} is already registered")
        _NETWORKS[name] = builder
        return builder

    return decorate


def list_gan_networks() -> list[str]:
    return sorted(_NETWORKS)


def build_gan_network(name: str, **kw: Any) -> nn.Module:
    """Build network ``name`` with options ``kw`` (unknown options are an error, not ignored)."""
    if name not in _NETWORKS:
        raise ConfigError(f"unknown GAN network {name!r}; known: {', '.join(sorted(_NETWORKS))}")
    builder = _NETWORKS[name]
    accepted = inspect.signature(builder).parameters
    unknown = sorted(k for k in kw if k not in accepted)
    if unknown:
        raise ConfigError(f"GAN network {name!r} does not take option(s) {', '.join(unknown)}")
    return builder(**kw)


def init_gan_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Conv weights ~ N(0, std), biases 0; affine norm weights ~ N(1, std) (CycleGAN's 'normal' init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


class GeneratorConfig(StrictModel):
    """ResNet generator (docs/methods/sda.md defaults: 9 blocks, ngf 64, 2 down/up-samplings)."""

    name: str = "resnet_generator"
    ngf: int = Field(64, ge=1, description="channels of the first conv (doubled at every down-sampling)")
    n_blocks: int = Field(9, ge=0, description="residual blocks at the bottleneck")
    n_down: int = Field(2, ge=0, le=4, description="stride-2 down-samplings (and as many up-samplings)")


class DiscriminatorConfig(StrictModel):
    """PatchGAN (docs/methods/sda.md: 70x70, 3 conv layers 64-128-256, then 512 and 1)."""

    name: str = "patch_discriminator"
    ndf: int = Field(64, ge=1)
    n_layers: int = Field(
        3, ge=1, le=5, description="stride-2 conv layers (3 gives the 70x70 receptive field)"
    )


def check_generator_size(n_down: int, height: int, width: int, where: str = "generator") -> None:
    """Images must survive ``n_down`` halvings (and keep >= 2 pixels for the reflect padding)."""
    step = 2**n_down
    if height % step or width % step or min(height, width) // step < 2:
        raise ConfigError(
            f"{where}: images {height}x{width} do not fit a generator with n_down={n_down}; "
            f"expected height and width multiples of {step} and at least {2 * step}"
        )


def patch_grid(n_layers: int, height: int, width: int) -> tuple[int, int]:
    """PatchGAN output grid: each stride-2 layer halves the size, each of the two stride-1 ones takes 1."""
    return height // 2**n_layers - 2, width // 2**n_layers - 2


def check_patch_size(n_layers: int, height: int, width: int, where: str = "discriminator") -> None:
    h, w = patch_grid(n_layers, height, width)
    if h < 1 or w < 1:
        raise ConfigError(
            f"{where}: images {height}x{width} are too small for n_layers={n_layers} "
            f"(the patch grid would be {h}x{w}); lower n_layers"
        )


class ResidualBlock(nn.Module):
    """x + [reflect-pad, conv3x3, IN, ReLU, reflect-pad, conv3x3, IN](x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, n_down × (stride-2 conv, IN, ReLU), n_blocks residual blocks, n_down × (stride-2
    transposed conv, IN, ReLU), c7s1-3, sigmoid, normalize(mean, std). Input height and width must be
    multiples of ``2 ** n_down`` (the output then has the input's size)."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        ngf: int = 64,
        n_blocks: int = 9,
        n_down: int = 2,
    ) -> None:
        super().__init__()
        self.n_down = n_down
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
        ]
        channels = ngf
        for _ in range(n_down):
            layers += [
                nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(channels * 2),
                nn.ReLU(inplace=True),
            ]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, 3, 7)]
        self.body = nn.Sequential(*layers)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        init_gan_weights(self)

    def check_size(self, height: int, width: int, where: str = "generator") -> None:
        check_generator_size(self.n_down, height, width, where)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(self.body(x)) - self.mean) / self.std


class PatchDiscriminator(nn.Module):
    """C64 (no norm) - C128 - C256 ... (stride 2, IN, LeakyReLU 0.2), one stride-1 layer, then a
    1-channel stride-1 conv: one real/fake score per overlapping patch."""

    def __init__(self, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = ndf
        for n in range(1, n_layers):
            out = ndf * min(2**n, 8)
            layers += [
                nn.Conv2d(channels, out, 4, stride=2, padding=1),
                nn.InstanceNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        out = ndf * min(2**n_layers, 8)
        layers += [
            nn.Conv2d(channels, out, 4, stride=1, padding=1),
            nn.InstanceNorm2d(out),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out, 1, 4, stride=1, padding=1),
        ]
        self.body = nn.Sequential(*layers)
        init_gan_weights(self)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return patch_grid(self.n_layers, height, width)

    def check_size(self, height: int, width: int, where: str = "discriminator") -> None:
        check_patch_size(self.n_layers, height, width, where)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_gan_network("resnet_generator")
def resnet_generator(
    mean: tuple[float, ...], std: tuple[float, ...], ngf: int = 64, n_blocks: int = 9, n_down: int = 2
) -> ResnetGenerator:
    """``mean``/``std``: the normalization of the re-ID pipeline (the transforms' mean and std)."""
    return ResnetGenerator(mean, std, ngf=ngf, n_blocks=n_blocks, n_down=n_down)


@register_gan_network("patch_discriminator")
def patch_discriminator(ndf: int = 64, n_layers: int = 3) -> PatchDiscriminator:
    return PatchDiscriminator(ndf=ndf, n_layers=n_layers)


def build_generator(cfg: GeneratorConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    options = cfg.model_dump(exclude={"name"})
    return build_gan_network(cfg.name, mean=tuple(mean), std=tuple(std), **options)


def build_discriminator(cfg: DiscriminatorConfig) -> nn.Module:
    return build_gan_network(cfg.name, **cfg.model_dump(exclude={"name"}))
