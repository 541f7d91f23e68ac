"""Write samples as WebDataset tar shards plus a parquet index and a dataset card.

Layout written (atomically: into a temp dir beside the target, renamed at the end)::

    <out_dir>/<dataset>/<split>-000000.tar ...   members <key>.jpg and <key>.json
    <out_dir>/<dataset>/index.parquet            one row per sample, byte range of its .jpg
    <out_dir>/<dataset>/dataset_card.{json,md}

Tars are deterministic: samples sorted by split (train, query, gallery) then key; fixed mtime, owner
and mode; JPEG bytes are stored untouched, other formats are converted once to JPEG.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from reidflow.data.card import ColourStats, build_card, write_card
from reidflow.data.index import INDEX_FILENAME, write_index
from reidflow.data.sample import SPLITS, Sample
from reidflow.errors import ArtifactError, ConfigError, DataError

TAR_FORMAT = tarfile.PAX_FORMAT  # long keys get a PAX header instead of failing
TAR_MTIME = 0
TAR_OWNER = "reidflow"
TAR_MODE = 0o444
TAR_BLOCK = tarfile.BLOCKSIZE
TAR_RECORD = tarfile.RECORDSIZE
CONVERTED_JPEG_QUALITY = 95
JPEG_FORMATS = {"JPEG", "MPO"}  # MPO files are plain JPEG streams with extra APP segments
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ShardResult:
    """What :func:`write_shards` produced."""

    dataset_dir: Path
    index_path: Path
    card_json: Path
    card_md: Path
    num_samples: int
    shards: list[dict[str, Any]] = field(default_factory=list)  # path, samples, bytes, sha256
    converted: list[str] = field(default_factory=list)  # source relpaths
    skipped: list[dict[str, str]] = field(default_factory=list)  # source, reason


@dataclass(frozen=True)
class _Entry:
    sample: Sample
    key: str
    relpath: str
    file: Path


@dataclass(frozen=True)
class _Image:
    jpeg: bytes
    width: int
    height: int
    converted_from: str | None


def sample_key(dataset: str, relpath: str) -> str:
    """``<dataset>_`` + relpath without extension, every char outside [A-Za-z0-9_-] -> ``_``."""
    stem = Path(relpath).with_suffix("").as_posix()
    return f"{dataset}_{_KEY_UNSAFE.sub('_', stem)}"


def _entries(samples: Sequence[Sample], dataset: str, root: Path) -> list[_Entry]:
    root_abs = os.path.abspath(root)
    by_key: dict[str, _Entry] = {}
    for sample in samples:
        path = Path(sample.path)
        file = path if path.is_absolute() else root / path
        relpath = Path(os.path.relpath(os.path.abspath(file), root_abs)).as_posix()
        if relpath.startswith("../") or relpath in ("..", "."):
            raise DataError(f"{sample.path}: expected an image under the dataset root {root}")
        key = sample_key(dataset, relpath)
        if key in by_key:
            raise DataError(
                f"duplicate sample key {key!r}: {by_key[key].file} and {file} map to the same key"
            )
        by_key[key] = _Entry(sample, key, relpath, file)
    order = {split: i for i, split in enumerate(SPLITS)}
    return sorted(by_key.values(), key=lambda e: (order[e.sample.split], e.key))


def _decode(entry: _Entry, colour: ColourStats | None) -> _Image:
    """Validate by decoding; keep JPEG bytes, convert anything else once to JPEG."""
    try:
        data = entry.file.read_bytes()
    except OSError as exc:
        raise DataError(f"{entry.file}: cannot read image ({exc.strerror})") from exc
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            fmt = image.format or "unknown"
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{entry.file}: not a decodable image ({_stable_reason(exc)})") from exc
    if colour is not None:
        colour.add(entry.sample.domain, entry.sample.camid, np.asarray(rgb))
    if fmt in JPEG_FORMATS:
        return _Image(data, rgb.width, rgb.height, None)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=CONVERTED_JPEG_QUALITY)
    return _Image(buffer.getvalue(), rgb.width, rgb.height, fmt.lower())


_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|\s+at 0x[0-9a-fA-F]+")


def _stable_reason(exc: BaseException) -> str:
    """The decoder's reason without object reprs and memory addresses, which differ between runs
    (skip reasons go into the dataset card, whose digest must be reproducible)."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "cannot identify the image format"
    return _ADDRESS.sub("", str(exc)).strip() or type(exc).__name__


def _member_bytes(name: str, size: int) -> int:
    """Bytes a member occupies in the tar: header(s) plus data padded to whole blocks."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, TAR_MODE
    info.uname = info.gname = TAR_OWNER
    header = len(info.tobuf(TAR_FORMAT, "utf-8", "surrogateescape"))
    return header + -(-size // TAR_BLOCK) * TAR_BLOCK


def _tar_bytes(members_bytes: int) -> int:
    """Final tar size: members, two zero end blocks, padded to a whole record."""
    return -(-(members_bytes + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


class _ShardSink:
    """Writes one split's samples into ``<split>-NNNNNN.tar`` files no larger than a byte limit."""

    def __init__(self, directory: Path, split: str, max_bytes: int) -> None:
        self.directory = directory
        self.split = split
        self.max_bytes = max_bytes
        self.number = -1
        self.writer: wds.TarWriter | None = None
        self.stream: io.BufferedWriter | None = None
        self.members_bytes = 0
        self.pending: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.shards: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return f"{self.split}-{self.number:06d}.tar"

    def add(self, row: dict[str, Any], jpeg: bytes, meta: bytes) -> None:
        key = row["key"]
        grow = _member_bytes(f"{key}.jpg", len(jpeg)) + _member_bytes(f"{key}.json", len(meta))
        if self.writer is None or (self.pending and _tar_bytes(self.members_bytes + grow) > self.max_bytes):
            self._next_shard()
        assert self.writer is not None
        self.writer.write({"__key__": key, "jpg": jpeg, "json": meta})
        self.members_bytes += grow
        self.pending.append(row)

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        assert self.stream is not None
        self.stream.close()
        path = self.directory / self.name
        offsets = _member_offsets(path)
        for row in self.pending:
            member = f"{row['key']}.jpg"
            if member not in offsets or offsets[member][1] != row["size"]:
                raise DataError(f"{path}: member {member} missing or of unexpected size after writing")
            row["offset"] = offsets[member][0]
            row["shard"] = self.name
        self.shards.append(
            {
                "path": self.name,
                "samples": len(self.pending),
                "bytes": path.stat().st_size,
                "sha256": _sha256_file(path),
            }
        )
        self.rows.extend(self.pending)
        self.pending = []
        self.writer = None
        self.stream = None

    def abort(self) -> None:
        """Release the open shard file after an error (the temp dir is removed by the caller)."""
        try:
            if self.writer is not None:
                self.writer.close()  # finishes the tar stream so nothing flushes into a closed file later
        finally:
            if self.stream is not None:
                self.stream.close()
        self.writer = None
        self.stream = None

    def _next_shard(self) -> None:
        self.close()
        self.number += 1
        self.members_bytes = 0
        self.stream = open(self.directory / self.name, "wb")  # noqa: SIM115 - closed in close()/abort()
        self.writer = wds.TarWriter(
            self.stream,
            user=TAR_OWNER,
            group=TAR_OWNER,
            mode=TAR_MODE,
            encoder=False,
            mtime=TAR_MTIME,
            format="PAX_FORMAT",
        )


def write_shards(
    samples: Sequence[Sample],
    out_dir: Path,
    dataset: str,
    root: Path,
    shard_max_bytes: int = 256 * 2**20,
    skip_bad: bool = False,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
) -> ShardResult:
    """Shard ``samples`` (image paths absolute or relative to ``root``) into ``<out_dir>/<dataset>``.

    Every image is decoded once to validate it; an unreadable one raises :class:`DataError` naming
    the file, or with ``skip_bad`` is left out and listed in the card. ``progress(done, total)`` is
    called after each sample. A shard exceeds ``shard_max_bytes`` only if one sample alone does.
    An existing dataset directory is an error unless ``overwrite``.
    """
    if not _DATASET_NAME.match(dataset):
        raise ConfigError(f"dataset name {dataset!r}: expected only letters, digits, '_' or '-'")
    if shard_max_bytes < TAR_RECORD:
        raise ConfigError(f"shard_max_bytes={shard_max_bytes}: expected at least {TAR_RECORD}")
    if not samples:
        raise DataError(f"dataset {dataset!r}: expected at least one sample, got none")
    root = Path(root)
    out_dir = Path(out_dir)
    target = out_dir / dataset
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target}: dataset directory already exists (pass overwrite=True)")
    entries = _entries(samples, dataset, root)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset}.partial-", dir=out_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset dir is meant to be shared
    try:
        result = _write_all(entries, tmp, dataset, shard_max_bytes, skip_bad, progress)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dataset}.old-", dir=out_dir))
            target.rename(trash / dataset)
            tmp.rename(target)
            shutil.rmtree(trash)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShardResult(
        dataset_dir=target,
        index_path=target / INDEX_FILENAME,
        card_json=target / result.card_json.name,
        card_md=target / result.card_md.name,
        num_samples=result.num_samples,
        shards=result.shards,
        converted=result.converted,
        skipped=result.skipped,
    )


def _write_all(
    entries: list[_Entry],
    directory: Path,
    dataset: str,
    shard_max_bytes: int,
    skip_bad: bool,
    progress: ProgressFn | None,
) -> ShardResult:
    colour = ColourStats()
    skipped: list[dict[str, str]] = []
    sinks: dict[str, _ShardSink] = {}
    try:
        _write_samples(entries, directory, shard_max_bytes, skip_bad, progress, colour, skipped, sinks)
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    rows = [row for sink in sinks.values() for row in sink.rows]
    if not rows:
        raise DataError(f"dataset {dataset!r}: every image was skipped as unreadable")
    shards = [shard for sink in sinks.values() for shard in sink.shards]
    write_index(rows, directory / INDEX_FILENAME)
    card_json, card_md = write_card(build_card(dataset, rows, shards, colour, skipped), directory)
    return ShardResult(
        dataset_dir=directory,
        index_path=directory / INDEX_FILENAME,
        card_json=card_json,
        card_md=card_md,
        num_samples=len(rows),
        shards=shards,
        converted=[r["source"] for r in rows if r["converted_from"]],
        skipped=skipped,
    )


def _write_samples(
    entries: list[_Entry],
    directory: Path,
    shard_max_bytes: int,
    skip_bad: bool,
    progress: ProgressFn | None,
    colour: ColourStats,
    skipped: list[dict[str, str]],
    sinks: dict[str, _ShardSink],
) -> None:
    """Validate, convert and append every entry to its split's shards (entries arrive sorted)."""
    for done, entry in enumerate(entries, start=1):
        try:
            image = _decode(entry, colour)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append({"source": entry.relpath, "reason": str(exc)})
        else:
            s = entry.sample
            meta = {
                "pid": s.pid,
                "camid": s.camid,
                "domain": s.domain,
                "split": s.split,
                "source": entry.relpath,
                "width": image.width,
                "height": image.height,
                "converted_from": image.converted_from,
            }
            row = dict(
                meta,
                key=entry.key,
                shard="",
                offset=-1,
                size=len(image.jpeg),
                sha256=hashlib.sha256(image.jpeg).hexdigest(),
            )
            meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
            if s.split not in sinks:
                for other in sinks.values():
                    other.close()
                sinks[s.split] = _ShardSink(directory, s.split, shard_max_bytes)
            sinks[s.split].add(row, image.jpeg, meta_bytes)
        if progress is not None:
            progress(done, len(entries))
    for sink in sinks.values():
        sink.close()
