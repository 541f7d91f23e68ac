"""CUHK-SYSU as used for DG training: person crops in ``cropped_images/p<pid>_s<scene>_<k>.jpg``.

CUHK-SYSU itself publishes whole scenes with box annotations; DG work trains on the crops cut from
them and stored flat in ``cropped_images``, named ``p11422_s16929_1.jpg`` (person, scene, crop number
within the scene). Some re-cut copies drop the crop number (``p11422_s16929.jpg``); both are read.
Scenes come from moving cameras and movies, so there is no camera label: every crop gets camera 0.
"""

from __future__ import annotations

import re
from pathlib import Path

from reidflow.data.readers.base import ReadContext, locate_published, parse_folder, require_folder
from reidflow.data.sample import Sample

TOP_FOLDERS = ("cuhk_sysu", "CUHK-SYSU", "cuhk-sysu", "cuhksysu")
CROPS_FOLDER = "cropped_images"
NAME_PATTERN = re.compile(r"p(?P<pid>\d+)_s(?P<scene>\d+)(?:_(?P<crop>\d+))?\.jpg")
EXAMPLE = "p11422_s16929_1.jpg"


def read_cuhksysu(root: Path, ctx: ReadContext) -> list[Sample]:
    published = locate_published(root, TOP_FOLDERS, [CROPS_FOLDER], "CUHK-SYSU")
    folder = require_folder(published, CROPS_FOLDER, EXAMPLE)

    def build(path: Path, match: re.Match[str]) -> Sample:
        extra = {"scene": int(match["scene"])}
        if match["crop"] is not None:
            extra["crop"] = int(match["crop"])
        return ctx.sample(path, int(match["pid"]), 0, "train", **extra)

    return parse_folder(folder, NAME_PATTERN, EXAMPLE, ctx, build)
