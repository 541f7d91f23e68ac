"""QMUL i-LIDS (VIPeR-style release): ``i-LIDS_Pedestrian/Persons/NNNNMMM.jpg``.

``NNNN`` is the person, ``MMM`` the image number. The set has no camera labels and no published
query/gallery split, so the reader fixes one, deterministically: each person's first image (lowest
``MMM``) is the query with camera 0, the others are gallery images with camera 1. A person with a
single image is a gallery-only distractor. ``extra`` keeps ``image`` (``MMM``) and ``order`` (rank of
the image within its person, 0-based) so the evaluation stage can draw the random protocol instead.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from reidflow.data.readers.base import (
    ReadContext,
    locate_published,
    matching_images,
    require_folder,
    require_samples,
)
from reidflow.data.sample import Sample

TOP_FOLDERS = ("i-LIDS_Pedestrian", "ilids", "iLIDS")
PERSONS = "Persons"
NAME_PATTERN = re.compile(r"(?P<pid>\d{4})(?P<image>\d{3})\.jpg")
EXAMPLE = "0001001.jpg"


def read_ilids(root: Path, ctx: ReadContext) -> list[Sample]:
    published = locate_published(root, TOP_FOLDERS, [PERSONS], "QMUL i-LIDS")
    folder = require_folder(published, PERSONS, EXAMPLE)
    matches = matching_images(folder, NAME_PATTERN, EXAMPLE, ctx)
    parsed: dict[int, list[tuple[int, Path]]] = defaultdict(list)
    for path, match in matches:
        parsed[int(match["pid"])].append((int(match["image"]), path))
    samples: list[Sample] = []
    for pid, images in parsed.items():
        images.sort()
        for order, (image, path) in enumerate(images):
            is_query = order == 0 and len(images) > 1
            samples.append(
                ctx.sample(
                    path,
                    pid,
                    0 if is_query else 1,
                    "query" if is_query else "gallery",
                    image=image,
                    order=order,
                )
            )
    return require_samples(samples, folder, f"image files like {EXAMPLE}")
