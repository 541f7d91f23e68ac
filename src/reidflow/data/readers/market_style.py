"""The Market-1501 layout family: ``bounding_box_train``, ``query``, ``bounding_box_test`` folders.

Market-1501, DukeMTMC-reID, CUHK03-NP (``labeled`` / ``detected``) and PersonX share the folder
layout; they differ in the top folder name and the file naming, which each spec below pins down.
Camera numbers are not always 1..N: PersonX numbers its six cameras 3, 4, 8, 10, 11 and 12, so a spec
may list its published camera numbers, which then map to 0-based camids in that order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reidflow.data.readers.base import ReadContext, locate_published, parse_folder, require_folder
from reidflow.data.sample import Sample

SPLIT_FOLDERS = (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test"))
JUNK_PID = -1
DISTRACTOR_PID = 0


@dataclass(frozen=True)
class MarketStyleSpec:
    """How one dataset of the family names its folder and files.

    ``pattern`` must define the groups ``pid`` and ``cam``; every other named group is kept in
    ``Sample.extra`` as an int. Cameras are ``1..num_cameras`` (camid = number - 1) unless ``cameras``
    lists the published camera numbers (camid = position in that list).
    """

    dataset: str
    top_folders: tuple[str, ...]
    pattern: re.Pattern[str]
    example: str
    num_cameras: int
    cameras: tuple[int, ...] = ()
    camid_of: Mapping[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numbers = self.cameras or tuple(range(1, self.num_cameras + 1))
        object.__setattr__(self, "camid_of", {number: camid for camid, number in enumerate(numbers)})

    def expected_cameras(self) -> str:
        if self.cameras:
            return "a camera number among " + ", ".join(f"c{c}" for c in self.cameras)
        return f"a camera number c1..c{self.num_cameras}"


MARKET1501 = MarketStyleSpec(
    dataset="Market-1501",
    top_folders=("Market-1501-v15.09.15", "Market-1501"),
    pattern=re.compile(
        r"(?P<pid>-1|\d{4})_c(?P<cam>\d{1,2})s(?P<seq>\d)_(?P<frame>\d{6})_(?P<bbox>\d{2})\.jpg"
    ),
    example="0002_c1s1_000451_03.jpg",
    num_cameras=99,  # Market-1501 has 6; our synthetic domains reuse the layout with up to 99 cameras
)
DUKEMTMC = MarketStyleSpec(
    dataset="DukeMTMC-reID",
    top_folders=("DukeMTMC-reID",),
    pattern=re.compile(r"(?P<pid>\d{4})_c(?P<cam>\d)_f(?P<frame>\d{7})\.jpg"),
    example="0005_c2_f0046985.jpg",
    num_cameras=8,
)
CUHK03NP = MarketStyleSpec(
    dataset="CUHK03-NP",
    top_folders=("cuhk03-np",),
    pattern=re.compile(r"(?P<pid>\d{4})_c(?P<cam>\d)_(?P<shot>\d+)\.png"),
    example="0001_c1_1.png",
    num_cameras=2,
)
PERSONX = MarketStyleSpec(
    dataset="PersonX",
    top_folders=("PersonX", "personX", "personx"),
    pattern=re.compile(r"(?P<pid>\d{4})_c(?P<cam>\d{1,2})s(?P<seq>\d+)_(?P<frame>\d+)\.jpg"),
    example="0001_c10s1_000001.jpg",
    num_cameras=6,
    cameras=(3, 4, 8, 10, 11, 12),  # -> camids 0..5, the order the UDA toolkits use
)
PERSONX_SUBSET = "subset1"  # the release wraps the split folders in PersonX/subset1/


def read_split_folders(
    folder_root: Path, spec: MarketStyleSpec, ctx: ReadContext, **common_extra: Any
) -> list[Sample]:
    """Read the three split folders under ``folder_root`` (already the published folder)."""
    folders = [(split, require_folder(folder_root, name, spec.example)) for split, name in SPLIT_FOLDERS]
    samples: list[Sample] = []
    for split, folder in folders:
        samples.extend(read_folder(folder, spec, split, ctx, **common_extra))
    return samples


def read_folder(
    folder: Path, spec: MarketStyleSpec, split: str, ctx: ReadContext, **common_extra: Any
) -> list[Sample]:
    """Read one folder of ``spec``-named images as ``split`` (junk left out, distractors gallery-only)."""
    return parse_folder(folder, spec.pattern, spec.example, ctx, _builder(spec, split, ctx, common_extra))


def _builder(spec: MarketStyleSpec, split: str, ctx: ReadContext, common_extra: dict[str, Any]):
    def build(path: Path, match: re.Match[str]) -> Sample | None:
        pid, cam = int(match["pid"]), int(match["cam"])
        if pid == JUNK_PID:
            ctx.excluded += 1
            return None
        camid = spec.camid_of.get(cam)
        if camid is None:
            ctx.reject(path, spec.expected_cameras(), f"c{cam} in {path.name!r}")
            return None
        if pid == DISTRACTOR_PID and split != "gallery":
            ctx.reject(path, "distractor id 0000 only in the gallery folder", f"{path.name!r} in {split}")
            return None
        extra: dict[str, Any] = {k: int(v) for k, v in match.groupdict().items() if k not in ("pid", "cam")}
        extra.update(common_extra)
        if pid == DISTRACTOR_PID:
            extra["distractor"] = True
        return ctx.sample(path, pid, camid, split, **extra)

    return build


def _reader(spec: MarketStyleSpec):
    def read(root: Path, ctx: ReadContext) -> list[Sample]:
        published = locate_published(
            root, spec.top_folders, [name for _, name in SPLIT_FOLDERS], spec.dataset
        )
        return read_split_folders(published, spec, ctx)

    return read


read_market1501 = _reader(MARKET1501)
read_dukemtmc = _reader(DUKEMTMC)


def read_personx(root: Path, ctx: ReadContext) -> list[Sample]:
    """PersonX: ``PersonX/subset1/<split folders>`` as released, or the split folders without the wrapper."""
    split_names = [name for _, name in SPLIT_FOLDERS]
    published = locate_published(root, PERSONX.top_folders, [*split_names, PERSONX_SUBSET], PERSONX.dataset)
    wrapped = published / PERSONX_SUBSET
    if wrapped.is_dir() and not any((published / name).exists() for name in split_names):
        published = wrapped
    return read_split_folders(published, PERSONX, ctx)


def read_cuhk03np(root: Path, ctx: ReadContext, variant: str) -> list[Sample]:
    """CUHK03-NP: ``cuhk03-np/{labeled,detected}/<split folders>``; ``variant`` picks the boxes."""
    published = locate_published(root, CUHK03NP.top_folders, ["labeled", "detected"], CUHK03NP.dataset)
    variant_root = require_folder(published, variant, "bounding_box_train/" + CUHK03NP.example)
    return read_split_folders(variant_root, CUHK03NP, ctx, variant=variant)
