"""The Market-1501 layout family: ``bounding_box_train``, ``query``, ``bounding_box_test`` folders.

Market-1501, DukeMTMC-reID, CUHK03-NP (``labeled`` / ``detected``) and PersonX share the folder
layout; they differ in the top folder name and the file naming, which each spec below pins down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    ``Sample.extra`` as an int.
    """

    dataset: str
    top_folders: tuple[str, ...]
    pattern: re.Pattern[str]
    example: str
    num_cameras: int


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
    pattern=re.compile(r"(?P<pid>\d{4})_c(?P<cam>\d)s(?P<seq>\d+)_(?P<frame>\d+)\.jpg"),
    example="0001_c1s1_000001.jpg",
    num_cameras=6,
)


def read_split_folders(
    folder_root: Path, spec: MarketStyleSpec, ctx: ReadContext, **common_extra: Any
) -> list[Sample]:
    """Read the three split folders under ``folder_root`` (already the published folder)."""
    folders = [(split, require_folder(folder_root, name, spec.example)) for split, name in SPLIT_FOLDERS]
    samples: list[Sample] = []
    for split, folder in folders:
        build = _builder(spec, split, ctx, common_extra)
        samples.extend(parse_folder(folder, spec.pattern, spec.example, ctx, build))
    return samples


def _builder(spec: MarketStyleSpec, split: str, ctx: ReadContext, common_extra: dict[str, Any]):
    def build(path: Path, match: re.Match[str]) -> Sample | None:
        pid, cam = int(match["pid"]), int(match["cam"])
        if pid == JUNK_PID:
            ctx.excluded += 1
            return None
        if not 1 <= cam <= spec.num_cameras:
            ctx.reject(path, f"a camera number c1..c{spec.num_cameras}", f"c{cam} in {path.name!r}")
            return None
        if pid == DISTRACTOR_PID and split != "gallery":
            ctx.reject(path, "distractor id 0000 only in the gallery folder", f"{path.name!r} in {split}")
            return None
        extra: dict[str, Any] = {k: int(v) for k, v in match.groupdict().items() if k not in ("pid", "cam")}
        extra.update(common_extra)
        if pid == DISTRACTOR_PID:
            extra["distractor"] = True
        return ctx.sample(path, pid, cam - 1, split, **extra)

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
read_personx = _reader(PERSONX)


def read_cuhk03np(root: Path, ctx: ReadContext, variant: str) -> list[Sample]:
    """CUHK03-NP: ``cuhk03-np/{labeled,detected}/<split folders>``; ``variant`` picks the boxes."""
    published = locate_published(root, CUHK03NP.top_folders, ["labeled", "detected"], CUHK03NP.dataset)
    variant_root = require_folder(published, variant, "bounding_box_train/" + CUHK03NP.example)
    return read_split_folders(variant_root, CUHK03NP, ctx, variant=variant)
