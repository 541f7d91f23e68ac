"""What a synthetic person looks like, independent of camera and pose.

Colours come from small palettes shared by every identity of every domain, weighted towards the
dark and neutral clothes most people wear, so many identities share a shirt or trouser colour and
only the combination of attributes tells them apart (as in real re-ID data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

Colour = tuple[float, float, float]
"""RGB in [0, 1]."""

# name: (rgb 0-255, weight as an upper garment, weight as a lower garment)
CLOTHES: dict[str, tuple[tuple[int, int, int], float, float]] = {
    "black": ((22, 22, 25), 4.0, 5.0),
    "charcoal": ((58, 58, 64), 3.0, 3.0),
    "grey": ((128, 128, 126), 2.5, 2.0),
    "white": ((230, 230, 224), 3.0, 0.8),
    "navy": ((28, 36, 80), 2.5, 2.5),
    "blue": ((52, 92, 168), 1.5, 0.8),
    "denim": ((64, 90, 130), 0.8, 4.0),
    "red": ((178, 34, 34), 1.2, 0.3),
    "maroon": ((104, 22, 34), 0.8, 0.4),
    "pink": ((228, 142, 164), 0.8, 0.2),
    "orange": ((226, 128, 40), 0.5, 0.1),
    "yellow": ((228, 204, 66), 0.6, 0.1),
    "beige": ((200, 180, 140), 1.2, 1.8),
    "brown": ((102, 70, 40), 0.8, 1.2),
    "olive": ((102, 108, 52), 0.7, 0.8),
    "green": ((40, 116, 64), 0.7, 0.3),
    "purple": ((102, 52, 128), 0.5, 0.1),
    "teal": ((26, 116, 128), 0.5, 0.1),
}
SKIN = ((255, 219, 186), (241, 194, 150), (224, 172, 125), (198, 134, 90), (141, 85, 50), (92, 56, 34))
HAIR = ((20, 16, 14), (52, 34, 22), (96, 64, 36), (186, 150, 90), (150, 146, 140), (140, 62, 30))
HAIR_WEIGHTS = (4.0, 3.0, 1.5, 0.8, 0.6, 0.3)
SHOES = ((24, 24, 24), (230, 230, 230), (96, 62, 36), (120, 120, 124), (40, 60, 120))
SHOE_WEIGHTS = (4.0, 2.5, 1.2, 1.0, 0.5)
ITEMS = (
    (24, 24, 26),
    (32, 40, 78),
    (110, 110, 112),
    (96, 62, 36),
    (160, 36, 40),
    (190, 170, 130),
    (90, 96, 48),
)

T = TypeVar("T")
Pattern = Literal["solid", "stripes", "checks", "print"]
Item = Literal["none", "bag", "backpack"]
Hat = Literal["none", "cap", "beanie"]


@dataclass(frozen=True)
class Identity:
    """Appearance attributes of one person. ``bag_side`` is +1 for the person's right hand."""

    build: float
    height: float
    skin: Colour
    hair: Colour
    hair_length: Literal["short", "medium", "long"]
    upper: Colour
    upper_second: Colour
    upper_pattern: Pattern
    long_sleeves: bool
    lower: Colour
    lower_second: Colour
    lower_pattern: Pattern
    lower_kind: Literal["trousers", "shorts", "skirt"]
    shoes: Colour
    item: Item
    item_colour: Colour
    bag_side: int
    hat: Hat
    hat_colour: Colour
    pattern_period: float


def _jittered(rng: np.random.Generator, rgb: tuple[int, int, int], spread: float = 0.035) -> Colour:
    """A palette colour with a small per-identity fabric/lighting difference."""
    base = np.asarray(rgb, dtype=np.float64) / 255.0
    varied = np.clip(base + rng.uniform(-spread, spread, size=3), 0.0, 1.0)
    return (float(varied[0]), float(varied[1]), float(varied[2]))


def _pick(rng: np.random.Generator, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    cumulative = np.cumsum(weights)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return options[min(index, len(options) - 1)]


def _clothes_colour(rng: np.random.Generator, column: int, avoid: str | None = None) -> tuple[str, Colour]:
    names = tuple(name for name in CLOTHES if name != avoid)
    weights = tuple(CLOTHES[name][column] for name in names)
    name = _pick(rng, names, weights)
    return name, _jittered(rng, CLOTHES[name][0])


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one person. The order of draws is fixed so a seed always gives the same person."""
    build = float(rng.uniform(0.82, 1.22))
    height = float(rng.uniform(0.93, 1.04))
    skin = _jittered(rng, _pick(rng, SKIN), spread=0.025)
    hair = _jittered(rng, _pick(rng, HAIR, HAIR_WEIGHTS), spread=0.02)
    hair_length = _pick(rng, ("short", "medium", "long"), (5.0, 2.0, 2.5))
    upper_name, upper = _clothes_colour(rng, 1)
    _, upper_second = _clothes_colour(rng, 1, avoid=upper_name)
    upper_pattern = _pick(rng, ("solid", "stripes", "checks", "print"), (5.0, 1.5, 1.0, 1.5))
    long_sleeves = bool(rng.random() < 0.55)
    lower_name, lower = _clothes_colour(rng, 2)
    _, lower_second = _clothes_colour(rng, 2, avoid=lower_name)
    lower_pattern = _pick(rng, ("solid", "stripes", "checks", "print"), (12.0, 0.6, 1.0, 0.4))
    lower_kind = _pick(rng, ("trousers", "shorts", "skirt"), (7.0, 1.5, 1.2))
    shoes = _jittered(rng, _pick(rng, SHOES, SHOE_WEIGHTS))
    item = _pick(rng, ("none", "bag", "backpack"), (4.0, 2.0, 2.5))
    item_colour = _jittered(rng, _pick(rng, ITEMS))
    bag_side = 1 if rng.random() < 0.5 else -1
    hat = _pick(rng, ("none", "cap", "beanie"), (7.0, 1.5, 1.0))
    hat_colour = _jittered(rng, _pick(rng, ITEMS))
    pattern_period = float(rng.uniform(0.035, 0.07))
    return Identity(
        build=build,
        height=height,
        skin=skin,
        hair=hair,
        hair_length=hair_length,
        upper=upper,
        upper_second=upper_second,
        upper_pattern=upper_pattern,
        long_sleeves=long_sleeves,
        lower=lower,
        lower_second=lower_second,
        lower_pattern=lower_pattern,
        lower_kind=lower_kind,
        shoes=shoes,
        item=item,
        item_colour=item_colour,
        bag_side=bag_side,
        hat=hat,
        hat_colour=hat_colour,
        pattern_period=pattern_period,
    )
