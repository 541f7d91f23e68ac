"""MSMT17 V1 and V2: image folders plus ``list_*.txt`` files of ``relpath pid`` lines.

V1: ``MSMT17_V1/{train,test}/``; V2: ``MSMT17_V2/{mask_train_v2,mask_test_v2}/``. Train and val
lists point into the train folder, query and gallery lists into the test folder. The camera is the
third ``_`` field of the file name (``0000_000_01_0303morning_0015_0.jpg`` -> camera 01).
"""

from __future__ import annotations

import re
from pathlib import Path

from reidflow.data.readers.base import (
    ReadContext,
    describe_folder,
    locate_published,
    require_file,
    require_samples,
)
from reidflow.data.sample import Sample
from reidflow.errors import DatasetLayoutError

TOP_FOLDERS = {"v1": "MSMT17_V1", "v2": "MSMT17_V2"}
IMAGE_FOLDERS = {"v1": ("train", "test"), "v2": ("mask_train_v2", "mask_test_v2")}
NUM_CAMERAS = 15
NAME_PATTERN = re.compile(
    r"(?P<pid>\d{4})_(?P<index>\d{3})_(?P<cam>\d{2})_(?P<date>\d{4})(?P<daytime>morning|noon|afternoon)"
    r"_(?P<frame>\d{4})_(?P<track>\d+)(?:_[a-z]+)?\.jpg"
)
EXAMPLE_LINE = "0000/0000_000_01_0303morning_0015_0.jpg 0"
LISTS = (
    ("list_train.txt", "train", 0),
    ("list_val.txt", "train", 0),
    ("list_query.txt", "query", 1),
    ("list_gallery.txt", "gallery", 1),
)  # (file, split, index into IMAGE_FOLDERS[version])


def read_msmt17(root: Path, ctx: ReadContext, version: str, merge_val: bool) -> list[Sample]:
    published = _locate(root, version)
    version = _detect_version(published) if version == "auto" else version
    folders = [_image_folder(published, name) for name in IMAGE_FOLDERS[version]]
    samples: list[Sample] = []
    for list_name, split, folder_index in LISTS:
        list_path = require_file(published, list_name, f"lines like '{EXAMPLE_LINE}'")
        entries = _read_list(list_path, folders[folder_index], ctx, split)
        if list_name == "list_val.txt" and not merge_val:
            ctx.excluded += len(entries)
            continue
        samples.extend(entries)
    return samples


def _locate(root: Path, version: str) -> Path:
    if version == "auto":
        present = [name for name in TOP_FOLDERS.values() if (root / name).is_dir()]
        if len(present) > 1:
            raise DatasetLayoutError(
                root,
                "one MSMT17 version, or the option version='v1' or 'v2' to choose",
                f"folders: {present}",
            )
        tops = tuple(TOP_FOLDERS.values())
    else:
        tops = (TOP_FOLDERS[version],)
    return locate_published(root, tops, [name for name, _, _ in LISTS], "MSMT17")


def _detect_version(published: Path) -> str:
    for version, (train, _) in IMAGE_FOLDERS.items():
        if (published / train).is_dir():
            return version
    raise DatasetLayoutError(
        published,
        "image folders 'train' and 'test' (MSMT17_V1) or 'mask_train_v2' and 'mask_test_v2' (MSMT17_V2)",
        describe_folder(published),
    )


def _image_folder(published: Path, name: str) -> Path:
    folder = published / name
    if not folder.is_dir():
        raise DatasetLayoutError(
            folder, f"a folder '{name}' with <pid>/<image>.jpg files", describe_folder(published)
        )
    return folder


def _read_list(list_path: Path, folder: Path, ctx: ReadContext, split: str) -> list[Sample]:
    samples: list[Sample] = []
    for line_no, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{list_path}:{line_no}"
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            ctx.reject(Path(where), f"a line '<relpath> <pid>' like '{EXAMPLE_LINE}'", repr(line))
            continue
        relpath, pid = fields[0], int(fields[1])
        match = NAME_PATTERN.fullmatch(Path(relpath).name)
        cam = int(match["cam"]) if match else 0
        if match is None or not 1 <= cam <= NUM_CAMERAS:
            ctx.reject(
                Path(where),
                f"an image name like '{EXAMPLE_LINE.split()[0]}' with camera 01..15",
                repr(relpath),
            )
            continue
        image = folder / relpath
        if not image.is_file():
            ctx.reject(image, f"the image listed at {where}", "no such file")
            continue
        extra = {"date": match["date"], "daytime": match["daytime"], "frame": int(match["frame"])}
        samples.append(ctx.sample(image, pid, cam - 1, split, **extra))
    return require_samples(samples, list_path, f"lines like '{EXAMPLE_LINE}'")
