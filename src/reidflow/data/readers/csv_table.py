"""Any dataset as a folder of images plus a CSV table ``path,pid,camid,split[,domain]``.

``path`` is relative to the dataset folder (no absolute paths, no ``..``), ``pid`` an integer >= 0,
``camid`` a 0-based integer, ``split`` one of train/query/gallery, ``domain`` (optional column) a
name that overrides the reader's domain for that row. Every row is validated; errors name the
table's path and line number.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from reidflow.data.readers.base import (
    DOMAIN_PATTERN,
    IMAGE_SUFFIXES,
    ReadContext,
    require_file,
    require_samples,
)
from reidflow.data.sample import SPLITS, Sample
from reidflow.errors import DatasetLayoutError

REQUIRED_COLUMNS = ("path", "pid", "camid", "split")
OPTIONAL_COLUMNS = ("domain",)
EXAMPLE_ROW = "images/0001_a.jpg,1,0,train"


def read_csv_table(root: Path, ctx: ReadContext, table: str) -> list[Sample]:
    table_path = root / table if not Path(table).is_absolute() else Path(table)
    require_file(table_path.parent, table_path.name, f"a header '{','.join(REQUIRED_COLUMNS)}[,domain]'")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    with table_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        _check_header(table_path, reader.fieldnames)
        for row in reader:
            sample = _parse_row(row, reader.line_num, table_path, root, ctx)
            if sample is None:
                continue
            if sample.path in seen:
                ctx.reject(
                    Path(f"{table_path}:{reader.line_num}"),
                    "each image listed once",
                    f"{row['path']!r} already on line {seen[sample.path]}",
                )
                continue
            seen[sample.path] = reader.line_num
            samples.append(sample)
    return require_samples(samples, table_path, f"rows like '{EXAMPLE_ROW}'")


def _check_header(table_path: Path, fieldnames: list[str] | None) -> None:
    columns = [c.strip() for c in fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise DatasetLayoutError(
            Path(f"{table_path}:1"),
            f"a header with columns {list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}",
            f"columns {columns}",
        )


def _parse_row(
    row: dict[str, str | None], line_no: int, table_path: Path, root: Path, ctx: ReadContext
) -> Sample | None:
    where = Path(f"{table_path}:{line_no}")
    values = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
    if None in row:  # more cells than header columns
        ctx.reject(where, f"{len(values)} cells per row", f"extra cells {row[None]}")  # type: ignore[index]
        return None
    relpath = PurePosixPath(values["path"].replace("\\", "/"))
    problems = []
    if not values["path"] or relpath.is_absolute() or ".." in relpath.parts:
        problems.append(("a relative image path inside the dataset folder", repr(values["path"])))
    elif relpath.suffix.lower() not in IMAGE_SUFFIXES:
        problems.append((f"an image file ending in one of {sorted(IMAGE_SUFFIXES)}", repr(values["path"])))
    elif not (root / relpath).is_file():
        problems.append((f"an existing image at {root / relpath}", "no such file"))
    pid, camid = _as_int(values["pid"]), _as_int(values["camid"])
    if pid is None or pid < 0:
        problems.append(("pid an integer >= 0", repr(values["pid"])))
    if camid is None or camid < 0:
        problems.append(("camid a 0-based integer >= 0", repr(values["camid"])))
    if values["split"] not in SPLITS:
        problems.append((f"split one of {list(SPLITS)}", repr(values["split"])))
    domain = values.get("domain") or ctx.domain
    if not DOMAIN_PATTERN.match(domain):
        problems.append(("domain a name of letters, digits, '_' or '-'", repr(domain)))
    if problems:
        expected, found = problems[0]
        ctx.reject(where, expected, found)
        return None
    assert pid is not None and camid is not None
    path = root / relpath
    return Sample(
        path=str(path), pid=pid, camid=camid, domain=domain, split=values["split"], extra={"line": line_no}
    )


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
