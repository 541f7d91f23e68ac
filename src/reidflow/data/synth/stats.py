"""Looking at a generated (or any Market-layout) domain: colour statistics and a contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from reidflow.data.card import ColourStats
from reidflow.data.synth.plan import MARKET_NAME, SPLIT_FOLDERS
from reidflow.errors import ConfigError, DataError, DatasetLayoutError


def domain_images(domain_root: str | Path) -> list[Path]:
    """Every crop of a Market-layout domain, sorted by split folder then name."""
    root = Path(domain_root)
    folders = [root / folder for folder in SPLIT_FOLDERS.values()]
    missing = [folder.name for folder in folders if not folder.is_dir()]
    if missing:
        raise DatasetLayoutError(
            root,
            "Market-1501 folders bounding_box_train/, query/, bounding_box_test/",
            found=f"missing {missing}",
        )
    images = [path for folder in folders for path in sorted(folder.glob("*.jpg"))]
    if not images:
        raise DatasetLayoutError(root, "at least one .jpg crop in the split folders", found="none")
    for path in images:
        if not MARKET_NAME.match(path.name):
            raise DatasetLayoutError(path, "a Market-style name like 0002_c1s1_000451_03.jpg")
    return images


def _evenly_spaced(items: list[Path], count: int) -> list[Path]:
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count)]


def _load_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: cannot decode image ({error})") from None


def colour_stats(domain_root: str | Path, max_images: int = 600) -> dict[str, Any]:
    """Per-domain and per-camera mean/std of R, G, B, brightness and saturation over up to
    ``max_images`` crops spread evenly over the sorted file list.

    Pixel-pooled, in [0, 1], computed by the dataset card's :class:`ColourStats` so the numbers
    match the card's. Camera keys are 0-based (``c0`` is ``_c1s`` in file names), as ``Sample.camid``.
    """
    if max_images < 1:
        raise ConfigError(f"colour_stats: max_images must be >= 1, got {max_images}")
    root = Path(domain_root)
    sample = _evenly_spaced(domain_images(root), max_images)
    stats = ColourStats()
    for path in sample:
        stats.add(root.name, int(MARKET_NAME.match(path.name)["cam"]) - 1, _load_rgb(path))
    summary = stats.summary()
    return {
        "domain": root.name,
        "images": len(sample),
        "definition": summary["definition"],
        "overall": summary["by_domain"][root.name],
        "cameras": {key.split("/", 1)[1]: value for key, value in summary["by_camera"].items()},
    }


def contact_sheet(
    domain_root: str | Path, out_png: str | Path, count: int = 24, columns: int = 8, scale: int = 1
) -> Path:
    """A grid of ``count`` crops spread over the domain, saved as a PNG (for eyes and docs)."""
    if count < 1 or columns < 1 or scale < 1:
        raise ConfigError(
            f"contact_sheet: count, columns and scale must be >= 1, got {count}, {columns}, {scale}"
        )
    crops = [_load_rgb(path) for path in _evenly_spaced(domain_images(domain_root), count)]
    height = max(crop.shape[0] for crop in crops)
    width = max(crop.shape[1] for crop in crops)
    gap = 2
    rows = -(-len(crops) // columns)
    sheet = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, 3), 40, dtype=np.uint8)
    for i, crop in enumerate(crops):
        top, left = gap + (i // columns) * (height + gap), gap + (i % columns) * (width + gap)
        sheet[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    image = Image.fromarray(sheet)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG", optimize=True)
    return out
