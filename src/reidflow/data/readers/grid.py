"""GRID (QMUL underground Re-ID): ``underground_reid/{probe,gallery}/*.jpeg``.

Names are ``<pid>_<cam>_<five numbers>.jpeg`` (``0001_1_25004_107_32_106_221.jpeg``), cameras 1-8.
The 250 probe persons each appear once in the gallery; the gallery's pid 0000 images (775 in the
published set) are distractors. Probe -> query, gallery -> gallery; the 10 random splits are drawn
later by the evaluation stage.
"""

from __future__ import annotations

import re
from pathlib import Path

from reidflow.data.readers.base import ReadContext, locate_published, parse_folder, require_folder
from reidflow.data.sample import Sample

TOP_FOLDERS = ("underground_reid", "GRID", "grid")
FOLDERS = (("probe", "query"), ("gallery", "gallery"))
NAME_PATTERN = re.compile(r"(?P<pid>\d{4})_(?P<cam>\d)_(?P<rest>\d+(?:_\d+){4})\.jpeg")
EXAMPLE = "0001_1_25004_107_32_106_221.jpeg"
NUM_CAMERAS = 8
DISTRACTOR_PID = 0


def read_grid(root: Path, ctx: ReadContext) -> list[Sample]:
    published = locate_published(root, TOP_FOLDERS, [name for name, _ in FOLDERS], "GRID")
    samples: list[Sample] = []
    for name, split in FOLDERS:
        folder = require_folder(published, name, EXAMPLE)

        def build(path: Path, match: re.Match[str], *, split=split) -> Sample | None:
            pid, cam = int(match["pid"]), int(match["cam"])
            if not 1 <= cam <= NUM_CAMERAS:
                ctx.reject(path, f"a camera number 1..{NUM_CAMERAS}", f"{cam} in {path.name!r}")
                return None
            if pid == DISTRACTOR_PID and split != "gallery":
                ctx.reject(path, "distractor id 0000 only in the gallery folder", f"{path.name!r} in probe")
                return None
            fields = [int(v) for v in match["rest"].split("_")]
            return ctx.sample(path, pid, cam - 1, split, name_fields=fields, distractor=pid == DISTRACTOR_PID)

        samples.extend(parse_folder(folder, NAME_PATTERN, EXAMPLE, ctx, build))
    return samples
