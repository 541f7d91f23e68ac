"""Colour statistics and contact sheets: the presets really are different domains."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidflow.data.synth import colour_stats, contact_sheet, generate, list_presets, load_preset
from reidflow.errors import DatasetLayoutError


@pytest.fixture(scope="module")
def preset_stats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    small = [
        load_preset(name).model_copy(
            update={"identities": 8, "images_per_identity_camera": (2, 3), "distractors": 0}
        )
        for name in list_presets()
    ]
    roots = generate(small, tmp_path_factory.mktemp("presets"), seed=0, workers=2)
    return {root.name: colour_stats(root) for root in roots}


def mean(stats: dict, channel: str) -> float:
    return stats["overall"][channel]["mean"]


def test_stats_have_every_channel_per_domain_and_camera(preset_stats: dict[str, dict]) -> None:
    stats = preset_stats["target_city"]
    assert stats["domain"] == "target_city" and stats["images"] > 0
    channels = {"r", "g", "b", "brightness", "saturation"}
    assert channels <= set(stats["overall"])
    assert stats["cameras"] and all(channels <= set(camera) for camera in stats["cameras"].values())
    assert sum(camera["images"] for camera in stats["cameras"].values()) == stats["images"]
    assert all(0.0 <= stats["overall"][c]["mean"] <= 1.0 for c in channels)


def test_every_pair_of_presets_differs_clearly(preset_stats: dict[str, dict]) -> None:
    channels = ("r", "g", "b", "brightness", "saturation")
    for a, b in itertools.combinations(sorted(preset_stats), 2):
        gap = max(abs(mean(preset_stats[a], c) - mean(preset_stats[b], c)) for c in channels)
        assert gap > 0.04, f"{a} and {b} look alike: largest mean difference {gap:.3f}"


def test_presets_have_the_look_their_names_promise(preset_stats: dict[str, dict]) -> None:
    brightness = {name: mean(s, "brightness") for name, s in preset_stats.items()}
    assert min(brightness, key=brightness.get) == "night_station"
    night = preset_stats["night_station"]
    assert mean(night, "b") > mean(night, "r")
    spread = {
        name: s["overall"]["brightness"]["std"] / mean(s, "brightness") for name, s in preset_stats.items()
    }
    assert min(spread, key=spread.get) == "foggy_campus"
    green = {name: mean(s, "g") - mean(s, "r") for name, s in preset_stats.items()}
    assert max(green, key=green.get) == "fluoro_office"
    warm = {name: mean(s, "r") - mean(s, "b") for name, s in preset_stats.items()}
    assert max(warm, key=warm.get) == "mall_warm"
    magenta = {name: (mean(s, "r") + mean(s, "b")) / 2 - mean(s, "g") for name, s in preset_stats.items()}
    assert max(magenta, key=magenta.get) == "target_city"


def test_cameras_differ_within_a_domain(preset_stats: dict[str, dict]) -> None:
    cameras = preset_stats["target_city"]["cameras"].values()
    assert np.ptp([camera["brightness"]["mean"] for camera in cameras]) > 0.03


def test_contact_sheet_is_a_grid_of_crops(tmp_path: Path) -> None:
    spec = load_preset("mall_warm").model_copy(update={"identities": 6, "distractors": 0})
    root = generate([spec], tmp_path, seed=1)[0]
    out = contact_sheet(root, tmp_path / "sheets" / "mall.png", count=12, columns=6)
    with Image.open(out) as sheet:
        assert sheet.format == "PNG"
        assert sheet.size == (6 * (64 + 2) + 2, 2 * (128 + 2) + 2)
        pixels = np.asarray(sheet)
    assert pixels[2:130, 2:66].std() > 10  # a crop, not the frame colour


def test_non_market_folder_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="bounding_box_train"):
        colour_stats(tmp_path)
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / folder).mkdir()
    (tmp_path / "query" / "person.jpg").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="person.jpg"):
        colour_stats(tmp_path)
