"""VIPeR: ``VIPeR/cam_a`` and ``VIPeR/cam_b``, one ``<id>_<angle>.bmp`` per person and camera.

The DG test protocol queries cam_a against cam_b; the random 316/316 splits are drawn later by the
evaluation stage. Every id must appear in both cameras (632 pairs in the published set).
"""

from __future__ import annotations

import re
from pathlib import Path

from reidflow.data.readers.base import ReadContext, locate_published, parse_folder, require_folder
from reidflow.data.sample import Sample
from reidflow.errors import DatasetLayoutError

TOP_FOLDERS = ("VIPeR", "viper")
CAMERAS = (("cam_a", "query"), ("cam_b", "gallery"))
NAME_PATTERN = re.compile(r"(?P<pid>\d{3})_(?P<angle>\d+)\.bmp")
EXAMPLE = "000_45.bmp"


def read_viper(root: Path, ctx: ReadContext) -> list[Sample]:
    published = locate_published(root, TOP_FOLDERS, [name for name, _ in CAMERAS], "VIPeR")
    by_camera: list[list[Sample]] = []
    for camid, (camera, split) in enumerate(CAMERAS):
        folder = require_folder(published, camera, EXAMPLE)

        def build(path: Path, match: re.Match[str], *, camid=camid, split=split) -> Sample:
            return ctx.sample(path, int(match["pid"]), camid, split, angle=int(match["angle"]))

        by_camera.append(parse_folder(folder, NAME_PATTERN, EXAMPLE, ctx, build))
    _check_pairs(published, *by_camera)
    return [s for samples in by_camera for s in samples]


def _check_pairs(published: Path, cam_a: list[Sample], cam_b: list[Sample]) -> None:
    ids_a, ids_b = {s.pid for s in cam_a}, {s.pid for s in cam_b}
    if ids_a != ids_b:
        raise DatasetLayoutError(
            published,
            "every person id in both cam_a and cam_b",
            f"ids only in cam_a: {sorted(ids_a - ids_b)[:10]}; ids only in cam_b: {sorted(ids_b - ids_a)[:10]}",
        )
