"""PRID2011 single-shot: ``prid_2011/single_shot/{cam_a,cam_b}/person_NNNN.png``.

Persons 1-200 appear in both cameras. cam_a's persons 201-385 and cam_b's persons 201-749 are
different people who appear in one camera only: the protocol keeps cam_b's as gallery distractors
and leaves cam_a's out (they could never be matched), counted in ``ReadReport.excluded``.
"""

from __future__ import annotations

import re
from pathlib import Path

from reidflow.data.readers.base import ReadContext, locate_published, parse_folder, require_folder
from reidflow.data.sample import Sample

TOP_FOLDERS = ("prid_2011", "prid2011", "PRID2011")
SINGLE_SHOT = "single_shot"
NAME_PATTERN = re.compile(r"person_(?P<pid>\d{4})\.png")
EXAMPLE = "person_0001.png"
SHARED_IDS = 200


def read_prid2011(root: Path, ctx: ReadContext) -> list[Sample]:
    published = locate_published(root, TOP_FOLDERS, [SINGLE_SHOT], "PRID2011")
    single_shot = require_folder(published, SINGLE_SHOT, f"cam_a/{EXAMPLE}")
    cam_a = require_folder(single_shot, "cam_a", EXAMPLE)
    cam_b = require_folder(single_shot, "cam_b", EXAMPLE)

    def build_query(path: Path, match: re.Match[str]) -> Sample | None:
        pid = int(match["pid"])
        if pid > SHARED_IDS:
            ctx.excluded += 1
            return None
        return ctx.sample(path, pid, 0, "query")

    def build_gallery(path: Path, match: re.Match[str]) -> Sample:
        pid = int(match["pid"])
        return ctx.sample(path, pid, 1, "gallery", distractor=pid > SHARED_IDS)

    query = parse_folder(cam_a, NAME_PATTERN, EXAMPLE, ctx, build_query)
    return query + parse_folder(cam_b, NAME_PATTERN, EXAMPLE, ctx, build_gallery)
