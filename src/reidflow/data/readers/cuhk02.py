"""CUHK02: five camera-pair sets ``P1``..``P5``, each with ``cam1`` and ``cam2`` folders of ``.png`` crops.

File names are ``<pid>_<shot>.png`` with ids local to their P-set, so the reader makes them unique:
``pid = 10000 * set + local id`` (P3's person 17 -> 30017). Every P-set is a different camera pair,
so cameras are numbered across sets: ``camid = 2 * (set - 1) + (cam - 1)`` (0..9).
"""

from __future__ import annotations

import re
from pathlib import Path

from reidflow.data.readers.base import ReadContext, locate_published, parse_folder, require_folder
from reidflow.data.sample import Sample

TOP_FOLDERS = ("Dataset", "CUHK02", "cuhk02")
PSETS = ("P1", "P2", "P3", "P4", "P5")
CAMERAS = ("cam1", "cam2")
PID_STRIDE = 10000
NAME_PATTERN = re.compile(r"(?P<pid>\d{1,4})_(?P<shot>\d+)\.png")
EXAMPLE = "001_1.png"
TEST_SPLIT_OF_CAMERA = {"cam1": "query", "cam2": "gallery"}


def read_cuhk02(root: Path, ctx: ReadContext, split: str) -> list[Sample]:
    """``split='train'`` emits everything as train; ``split='test'`` sends cam1 to query, cam2 to gallery."""
    published = locate_published(root, TOP_FOLDERS, PSETS, "CUHK02")
    samples: list[Sample] = []
    for set_index, pset in enumerate(PSETS, start=1):
        pset_folder = require_folder(published, pset, f"cam1/{EXAMPLE}")
        for cam_index, camera in enumerate(CAMERAS):
            folder = require_folder(pset_folder, camera, EXAMPLE)
            sample_split = split if split == "train" else TEST_SPLIT_OF_CAMERA[camera]
            camid = 2 * (set_index - 1) + cam_index

            def build(
                path: Path,
                match: re.Match[str],
                *,
                set_index=set_index,
                pset=pset,
                camid=camid,
                sample_split=sample_split,
            ) -> Sample:
                local = int(match["pid"])
                return ctx.sample(
                    path,
                    PID_STRIDE * set_index + local,
                    camid,
                    sample_split,
                    pset=pset,
                    local_pid=local,
                    shot=int(match["shot"]),
                )

            samples.extend(parse_folder(folder, NAME_PATTERN, EXAMPLE, ctx, build))
    return samples
