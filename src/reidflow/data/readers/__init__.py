"""Readers of the published re-ID dataset layouts, by name.

>>> samples = read_dataset("market1501", "data/market1501")          # doctest: +SKIP
>>> report = read_dataset_report("grid", "data/grid", strict=False)  # doctest: +SKIP
>>> report.skipped                                                    # doctest: +SKIP

Every reader takes ``domain`` (default: the reader's name) and ``strict`` (default True: a file name
that does not follow the published naming is an error; False: it is skipped, listed in
``ReadReport.skipped`` and logged as one warning). Other options are reader-specific and listed in
``READERS[name].options``; an unknown option or a bad value raises :class:`ReaderOptionError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reidflow.data.readers import (
    csv_table,
    cuhk02,
    cuhksysu,
    grid,
    ilids,
    market_style,
    msmt17,
    prid2011,
    viper,
    visda2020,
)
from reidflow.data.readers.base import (
    Option,
    ReadContext,
    ReaderOptionError,
    ReadReport,
    SkippedFile,
    check_domain,
    require_existing_root,
    sorted_samples,
)
from reidflow.data.sample import Sample
from reidflow.errors import ConfigError

__all__ = [
    "READERS",
    "Option",
    "ReadReport",
    "ReaderInfo",
    "ReaderOptionError",
    "SkippedFile",
    "list_readers",
    "read_dataset",
    "read_dataset_report",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderInfo:
    """A registered reader: what it reads, where it looks, which options it takes."""

    name: str
    dataset: str
    read: Callable[..., list[Sample]]
    top_folders: tuple[str, ...]
    options: Mapping[str, Option] = field(default_factory=dict)


COMMON_OPTIONS: Mapping[str, Option] = {
    "domain": Option(None, "Sample.domain of every sample (default: the reader's name)"),
    "strict": Option(True, "False skips files with unexpected names instead of raising", (True, False)),
}

READERS: dict[str, ReaderInfo] = {
    info.name: info
    for info in (
        ReaderInfo(
            "market1501", "Market-1501", market_style.read_market1501, market_style.MARKET1501.top_folders
        ),
        ReaderInfo(
            "dukemtmc", "DukeMTMC-reID", market_style.read_dukemtmc, market_style.DUKEMTMC.top_folders
        ),
        ReaderInfo(
            "msmt17",
            "MSMT17 (V1 or V2)",
            msmt17.read_msmt17,
            tuple(msmt17.TOP_FOLDERS.values()),
            {
                "version": Option(
                    "auto", "which release: v1, v2 or auto (from the folders)", ("auto", "v1", "v2")
                ),
                "merge_val": Option(True, "list_val.txt images join train (common practice)", (True, False)),
            },
        ),
        ReaderInfo(
            "cuhk03np",
            "CUHK03-NP",
            market_style.read_cuhk03np,
            market_style.CUHK03NP.top_folders,
            {"variant": Option("labeled", "which boxes: labeled or detected", ("labeled", "detected"))},
        ),
        ReaderInfo(
            "cuhk02",
            "CUHK02",
            cuhk02.read_cuhk02,
            cuhk02.TOP_FOLDERS,
            {
                "split": Option(
                    "train", "train (DG source) or test (cam1 query, cam2 gallery)", ("train", "test")
                )
            },
        ),
        ReaderInfo("cuhksysu", "CUHK-SYSU (cropped persons)", cuhksysu.read_cuhksysu, cuhksysu.TOP_FOLDERS),
        ReaderInfo("viper", "VIPeR", viper.read_viper, viper.TOP_FOLDERS),
        ReaderInfo("prid2011", "PRID2011 single-shot", prid2011.read_prid2011, prid2011.TOP_FOLDERS),
        ReaderInfo("grid", "GRID", grid.read_grid, grid.TOP_FOLDERS),
        ReaderInfo("ilids", "QMUL i-LIDS", ilids.read_ilids, ilids.TOP_FOLDERS),
        ReaderInfo("personx", "PersonX", market_style.read_personx, market_style.PERSONX.top_folders),
        ReaderInfo(
            "visda2020",
            "VisDA-2020 re-ID challenge (real target, PersonX source)",
            visda2020.read_visda2020,
            visda2020.TOP_FOLDERS,
            {
                "part": Option(
                    "target",
                    "target: unlabelled target_training (train) + target_validation (query, gallery); "
                    "source: the PersonX source folder (train)",
                    ("target", "source"),
                ),
                "labels_from": Option(
                    "lists",
                    "validation labels from the index lists or from the Market-style image names",
                    ("lists", "names"),
                ),
                "train_list": Option(
                    visda2020.TRAIN_LIST,
                    "camera list of target_training/image_train, in target_training/ (or the root) or absolute",
                ),
                "query_list": Option(
                    visda2020.QUERY_LIST,
                    "query index list, in the root (or target_validation/) or absolute",
                ),
                "gallery_list": Option(
                    visda2020.GALLERY_LIST,
                    "gallery index list, in the root (or target_validation/) or absolute",
                ),
                "source_folder": Option(
                    visda2020.SOURCE_FOLDER, "the source folder (with image_train/) for part=source"
                ),
            },
        ),
        ReaderInfo(
            "csv",
            "any folder of images with a CSV table",
            csv_table.read_csv_table,
            (),
            {"table": Option("samples.csv", "the CSV table, relative to the dataset folder or absolute")},
        ),
    )
}


def list_readers() -> list[str]:
    return sorted(READERS)


def read_dataset(name: str, root: str | Path, **options: Any) -> list[Sample]:
    """Read a dataset in its published layout; samples sorted by split then path."""
    return read_dataset_report(name, root, **options).samples


def read_dataset_report(name: str, root: str | Path, **options: Any) -> ReadReport:
    """Like :func:`read_dataset` but also returns what was skipped (``strict=False``) or excluded."""
    info = _reader_info(name)
    root_path = require_existing_root(root)
    resolved = _resolve_options(info, root_path, options)
    domain_option = resolved.pop("domain")
    domain = check_domain(info.name if domain_option is None else domain_option, root_path)
    ctx = ReadContext(reader=info.name, domain=domain, strict=resolved.pop("strict"))
    samples = sorted_samples(info.read(root_path, ctx, **resolved))
    report = ReadReport(info.name, str(root_path), samples, ctx.skipped, ctx.excluded)
    if report.skipped:
        logger.warning(
            "%s: skipped %d file(s) under %s that do not follow the published naming (strict=False); first: %s",
            info.name,
            len(report.skipped),
            root_path,
            report.skipped[0].path,
        )
    return report


def _reader_info(name: str) -> ReaderInfo:
    try:
        return READERS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset reader {name!r}; known readers: {list_readers()}") from None


def _resolve_options(info: ReaderInfo, root: Path, given: Mapping[str, Any]) -> dict[str, Any]:
    known = {**COMMON_OPTIONS, **info.options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ReaderOptionError(
            root, f"options of reader '{info.name}' among {sorted(known)}", f"unknown option(s) {unknown}"
        )
    resolved = {key: given.get(key, option.default) for key, option in known.items()}
    for key, value in resolved.items():
        option = known[key]
        valid = (
            any(value is c if isinstance(c, bool) else value == c for c in option.choices)
            if option.choices is not None
            else value is None or isinstance(value, str)
        )
        if not valid:
            allowed = list(option.choices) if option.choices is not None else "a string"
            raise ReaderOptionError(
                root, f"option '{key}' of reader '{info.name}' to be {allowed}", repr(value)
            )
    return resolved
