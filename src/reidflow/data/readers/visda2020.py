"""The VisDA-2020 re-ID challenge release: real target domain plus its PersonX source, side by side.

``part='target'`` (default) reads ``target_training/`` as the **unlabelled** train split (camera
from ``label_target_training.txt``, identity unknown: ``pid`` :data:`UNLABELLED_PID`) and
``target_validation/`` as query and gallery, labelled by the challenge's index lists
(``<image> <camera> <person> <index>`` per line) or, with ``labels_from='names'``, by the
Market-style image names. The target's five cameras are numbered 1, 2, 4, 5, 6 (camid 0-4).
``part='source'`` reads ``personX/image_train/`` (PersonX naming, cameras 3, 4, 8, 10, 11, 12) as a
labelled train split. ``target_test/`` carries no labels and is not read.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from reidflow.data.readers.base import (
    IMAGE_SUFFIXES,
    ReadContext,
    describe_folder,
    locate_published,
    require_folder,
    require_samples,
)
from reidflow.data.readers.market_style import (
    DISTRACTOR_PID,
    JUNK_PID,
    MARKET1501,
    PERSONX,
    MarketStyleSpec,
    read_folder,
)
from reidflow.data.sample import Sample
from reidflow.errors import DatasetLayoutError

DATASET = "VisDA-2020"
TOP_FOLDERS = ("challenge_datasets", "visda2020", "VisDA2020", "visda20", "visda")
TRAIN_FOLDER, TRAIN_IMAGES = "target_training", "image_train"
VALIDATION_FOLDER = "target_validation"
VALIDATION_IMAGES = {"query": "image_query", "gallery": "image_gallery"}
SOURCE_IMAGES = "image_train"
TARGET_CAMERAS = (1, 2, 4, 5, 6)  # -> camids 0..4; camera 3 does not occur in the target domain
UNLABELLED_PID = -1
"""``Sample.pid`` of a target training image: the challenge publishes no identities for them."""

TARGET = MarketStyleSpec(
    dataset="VisDA-2020 target validation",
    top_folders=TOP_FOLDERS,
    pattern=MARKET1501.pattern,
    example="0077_c5s1_003471_01.jpg",
    num_cameras=len(TARGET_CAMERAS),
    cameras=TARGET_CAMERAS,
)
TRAIN_LIST = "label_target_training.txt"
QUERY_LIST = "index_validation_query.txt"
GALLERY_LIST = "index_validation_gallery.txt"
SOURCE_FOLDER = "personX"
TRAIN_EXAMPLE_LINE = "00001.jpg 1"
VALIDATION_EXAMPLE_LINE = "0077_c5s1_003471_01.jpg 5 077 0000"
CAMERA_NUMBERS = ", ".join(str(c) for c in TARGET_CAMERAS)


def read_visda2020(
    root: Path,
    ctx: ReadContext,
    part: str,
    labels_from: str,
    train_list: str,
    query_list: str,
    gallery_list: str,
    source_folder: str,
) -> list[Sample]:
    train_list, query_list = train_list or TRAIN_LIST, query_list or QUERY_LIST
    gallery_list, source_folder = gallery_list or GALLERY_LIST, source_folder or SOURCE_FOLDER
    published = locate_published(root, TOP_FOLDERS, [TRAIN_FOLDER, VALIDATION_FOLDER, source_folder], DATASET)
    if part == "source":
        return _read_source(published, source_folder, ctx)
    samples = _read_train(published, train_list, ctx)
    validation = require_folder(
        published, VALIDATION_FOLDER, f"{VALIDATION_IMAGES['query']}/{TARGET.example}"
    )
    for split, folder_name in VALIDATION_IMAGES.items():
        folder = require_folder(validation, folder_name, TARGET.example)
        if labels_from == "names":
            samples.extend(read_folder(folder, TARGET, split, ctx))
            continue
        list_name = query_list if split == "query" else gallery_list
        list_path = _list_file(
            list_name,
            [published, validation],
            f"the challenge's {split} index, lines '<image> <camera> <person> <index>' like "
            f"'{VALIDATION_EXAMPLE_LINE}' (or the option labels_from='names')",
        )
        samples.extend(_read_validation_list(list_path, folder, split, ctx))
    return samples


# --- target training: unlabelled ----------------------------------------------------------------


def _read_train(published: Path, list_name: str, ctx: ReadContext) -> list[Sample]:
    folder = require_folder(published, TRAIN_FOLDER, f"{TRAIN_IMAGES}/00001.jpg and {list_name}")
    images = require_folder(folder, TRAIN_IMAGES, "00001.jpg")
    list_path = _list_file(
        list_name, [folder, published], f"the cameras of {TRAIN_IMAGES}/, lines like '{TRAIN_EXAMPLE_LINE}'"
    )
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line_no, line in _lines(list_path):
        where = Path(f"{list_path}:{line_no}")
        fields = line.split()
        if len(fields) not in (2, 3) or not all(_is_int(f) for f in fields[1:]):
            ctx.reject(
                where,
                f"a line '<image> <camera>' like '{TRAIN_EXAMPLE_LINE}' (an optional third integer "
                "column is ignored)",
                repr(line),
            )
            continue
        name, camera = fields[0], int(fields[1])
        camid = TARGET.camid_of.get(camera)
        if camid is None:
            ctx.reject(where, f"a camera number among {CAMERA_NUMBERS}", f"{fields[1]} for {name!r}")
            continue
        image = _listed_image(images, name, where, ctx)
        if image is None or _duplicate(name, line_no, seen, where, ctx):
            continue
        samples.append(ctx.sample(image, UNLABELLED_PID, camid, "train", unlabelled=True))
    return require_samples(samples, list_path, f"lines like '{TRAIN_EXAMPLE_LINE}'")


def _listed_image(folder: Path, name: str, where: Path, ctx: ReadContext) -> Path | None:
    relpath = PurePosixPath(name.replace("\\", "/"))
    if relpath.is_absolute() or ".." in relpath.parts or relpath.suffix.lower() not in IMAGE_SUFFIXES:
        ctx.reject(where, f"an image file name inside {folder.name}/ like '00001.jpg'", repr(name))
        return None
    image = folder / relpath
    if not image.is_file():
        ctx.reject(image, f"the image listed at {where}", "no such file")
        return None
    return image


# --- target validation: query and gallery -------------------------------------------------------


def _read_validation_list(list_path: Path, folder: Path, split: str, ctx: ReadContext) -> list[Sample]:
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line_no, line in _lines(list_path):
        where = Path(f"{list_path}:{line_no}")
        sample = _validation_sample(line, where, folder, split, ctx)
        if sample is not None and not _duplicate(Path(sample.path).name, line_no, seen, where, ctx):
            samples.append(sample)
    return require_samples(samples, list_path, f"lines like '{VALIDATION_EXAMPLE_LINE}'")


def _validation_sample(line: str, where: Path, folder: Path, split: str, ctx: ReadContext) -> Sample | None:
    fields = line.split()
    if len(fields) not in (3, 4) or not all(_is_int(f) for f in fields[1:]):
        ctx.reject(
            where, f"a line '<image> <camera> <person> <index>' like '{VALIDATION_EXAMPLE_LINE}'", repr(line)
        )
        return None
    name, camera, pid = fields[0], int(fields[1]), int(fields[2])
    match = TARGET.pattern.fullmatch(name)
    if match is None:
        ctx.reject(where, f"an image name like '{TARGET.example}'", repr(name))
        return None
    if (int(match["pid"]), int(match["cam"])) != (pid, camera):
        ctx.reject(
            where,
            f"camera {int(match['cam'])} and person {int(match['pid'])} as in the image name {name!r}",
            f"camera {fields[1]}, person {fields[2]}",
        )
        return None
    if pid == JUNK_PID:
        ctx.excluded += 1
        return None
    camid = TARGET.camid_of.get(camera)
    if camid is None:
        ctx.reject(where, TARGET.expected_cameras(), f"c{camera} in {name!r}")
        return None
    if pid == DISTRACTOR_PID and split != "gallery":
        ctx.reject(where, "distractor id 0000 only in the gallery list", f"{name!r} in the {split} list")
        return None
    image = folder / name
    if not image.is_file():
        ctx.reject(image, f"the image listed at {where}", "no such file")
        return None
    extra: dict[str, int | bool] = {k: int(match[k]) for k in ("seq", "frame", "bbox")}
    if len(fields) == 4:
        extra["index"] = int(fields[3])
    if pid == DISTRACTOR_PID:
        extra["distractor"] = True
    return ctx.sample(image, pid, camid, split, **extra)


# --- source: PersonX as the challenge ships it --------------------------------------------------


def _read_source(published: Path, source_folder: str, ctx: ReadContext) -> list[Sample]:
    top = require_folder(published, source_folder, f"{SOURCE_IMAGES}/{PERSONX.example}")
    images = require_folder(top, SOURCE_IMAGES, PERSONX.example)
    return read_folder(images, PERSONX, "train", ctx)


# --- list files ---------------------------------------------------------------------------------


def _list_file(name: str, folders: list[Path], content: str) -> Path:
    """``name`` if absolute, else the first of ``folders/name`` that exists."""
    if Path(name).is_absolute():
        candidates = [Path(name)]
    else:
        candidates = [folder / name for folder in folders]
    for path in candidates:
        if path.is_file():
            return path
    where = " or ".join(str(p.parent) for p in candidates)
    found = "no such file" if Path(name).is_absolute() else describe_folder(folders[0])
    raise DatasetLayoutError(candidates[0], f"a file '{Path(name).name}' in {where} with {content}", found)


def _lines(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8-sig")
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _duplicate(name: str, line_no: int, seen: dict[str, int], where: Path, ctx: ReadContext) -> bool:
    if name in seen:
        ctx.reject(where, "each image listed once", f"{name!r} already on line {seen[name]}")
        return True
    seen[name] = line_no
    return False


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
