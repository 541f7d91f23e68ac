"""What every reader shares: options, the read context, the report, and strict folder scanning.

A reader is a function ``read(root: Path, ctx: ReadContext, **options) -> list[Sample]`` where
``root`` is the folder the user named. It locates the published folder, parses file names and hands
each rejected file to ``ctx.reject`` which raises in strict mode and records it otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reidflow.data.sample import SPLITS, Sample
from reidflow.errors import ConfigError, DatasetLayoutError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


class ReaderOptionError(DatasetLayoutError, ConfigError):
    """An option passed to a reader is unknown or has a bad value.

    It is a :class:`DatasetLayoutError` (it names the dataset root and what was expected) and a
    :class:`ConfigError` (the fix is in the params/arguments, not on disk).
    """


@dataclass(frozen=True)
class Option:
    """One reader-specific option: its default and, when finite, the allowed values."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class SkippedFile:
    """A file left out under ``strict=False`` and why."""

    path: str
    reason: str


@dataclass
class ReadReport:
    """Everything a read produced.

    ``samples`` sorted by split (train, query, gallery) then path. ``skipped`` lists the files that
    did not match the published naming (only ever non-empty with ``strict=False``). ``excluded``
    counts images the dataset's own protocol leaves out on purpose (Market-1501 junk ``-1``,
    PRID2011 cam_a persons without a cam_b match, MSMT17 val lists when not merged).
    """

    reader: str
    root: str
    samples: list[Sample]
    skipped: list[SkippedFile] = field(default_factory=list)
    excluded: int = 0


@dataclass
class ReadContext:
    """Per-read state handed to a reader: labels to stamp on samples and the rejection policy."""

    reader: str
    domain: str
    strict: bool
    skipped: list[SkippedFile] = field(default_factory=list)
    excluded: int = 0

    def reject(self, path: Path, expected: str, found: str) -> None:
        """Raise for a file that breaks the layout, or record it when not strict."""
        if self.strict:
            raise DatasetLayoutError(path, expected, found)
        self.skipped.append(SkippedFile(str(path), f"expected {expected}; found {found}"))

    def sample(self, path: Path, pid: int, camid: int, split: str, **extra: Any) -> Sample:
        return Sample(path=str(path), pid=pid, camid=camid, domain=self.domain, split=split, extra=extra)


def check_domain(domain: Any, root: Path) -> str:
    if not isinstance(domain, str) or not DOMAIN_PATTERN.match(domain):
        raise ReaderOptionError(
            root, "option 'domain' to be a non-empty name of letters, digits, '_' or '-'", repr(domain)
        )
    return domain


def sorted_samples(samples: Iterable[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: (SPLITS.index(s.split), s.path))


def describe_folder(folder: Path) -> str:
    """Describe what a folder holds, for error messages."""
    entries = sorted(folder.iterdir())
    dirs = [p.name for p in entries if p.is_dir()]
    files = [p.name for p in entries if p.is_file()]
    if not dirs and not files:
        return "an empty folder"
    parts = []
    if dirs:
        parts.append(f"folders: {dirs[:20]}")
    if files:
        parts.append(f"files: {files[:10]}" + (f" (+{len(files) - 10} more)" if len(files) > 10 else ""))
    return "; ".join(parts)


def require_existing_root(root: str | Path) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DatasetLayoutError(path, "an existing dataset folder", "nothing at that path")
    if not path.is_dir():
        raise DatasetLayoutError(path, "a dataset folder", "a file")
    return path


def locate_published(root: Path, top_folders: Sequence[str], markers: Sequence[str], dataset: str) -> Path:
    """Return the published folder: ``root`` itself if it holds any of ``markers``, else ``root/<top>``.

    ``markers`` are entries (folders or files) the published folder must contain; a folder that holds
    only some of them is taken as the published folder so that the caller's ``require_*`` calls can
    name exactly what is missing.
    """
    if any((root / m).exists() for m in markers):
        return root
    for name in top_folders:
        candidate = root / name
        if candidate.is_dir():
            return candidate
    raise DatasetLayoutError(
        root,
        f"the {dataset} folder {_quoted(top_folders, 'or')} inside it, or a folder that itself contains "
        f"{_quoted(markers, 'and')}",
        describe_folder(root),
    )


def _quoted(names: Sequence[str], conjunction: str) -> str:
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} {conjunction} {quoted[-1]}"


def require_folder(parent: Path, name: str, files_like: str) -> Path:
    folder = parent / name
    if not folder.is_dir():
        raise DatasetLayoutError(
            folder, f"a folder '{name}' with files like {files_like}", describe_folder(parent)
        )
    return folder


def require_file(parent: Path, name: str, content: str) -> Path:
    path = parent / name
    if not path.is_file():
        raise DatasetLayoutError(path, f"a file '{name}' with {content}", describe_folder(parent))
    return path


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; hidden and non-image files are ignored."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def matching_images(
    folder: Path, pattern: re.Pattern[str], example: str, ctx: ReadContext
) -> list[tuple[Path, re.Match[str]]]:
    """Every image in ``folder`` whose whole name matches ``pattern``; others go to ``ctx.reject``."""
    images = image_files(folder)
    if not images:
        raise DatasetLayoutError(folder, f"image files like {example}", "no image files")
    matches = []
    for path in images:
        match = pattern.fullmatch(path.name)
        if match is None:
            ctx.reject(path, f"a file name like {example}", repr(path.name))
        else:
            matches.append((path, match))
    return matches


def parse_folder(
    folder: Path,
    pattern: re.Pattern[str],
    example: str,
    ctx: ReadContext,
    build: Callable[[Path, re.Match[str]], Sample | None],
) -> list[Sample]:
    """Parse every image in ``folder`` with ``pattern``; ``build`` turns a match into a Sample.

    ``build`` may return None for an image the protocol leaves out (it counts it itself) and may call
    ``ctx.reject`` for a name that matches the pattern but carries impossible values. A folder that
    ends up without a single sample is an error in any mode: an empty split is never what the user
    meant.
    """
    matches = matching_images(folder, pattern, example, ctx)
    samples = [s for s in (build(path, match) for path, match in matches) if s is not None]
    return require_samples(samples, folder, f"image files like {example}")


def require_samples(samples: list[Sample], where: Path, expected: str) -> list[Sample]:
    if not samples:
        raise DatasetLayoutError(where, expected, "no usable images")
    return samples
