"""The parquet index of a sharded dataset: one row per sample with the byte range of its image.

``<dataset_dir>/index.parquet`` stores ``shard`` relative to the dataset directory, so a dataset
directory can be moved or downloaded as a whole. :class:`ShardIndex` may combine several dataset
directories; it then rewrites ``shard`` relative to their common parent, :attr:`ShardIndex.root`, which
is the root an :class:`~reidflow.data.opener.Opener` must use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reidflow.data.opener import Opener
from reidflow.errors import DataError

INDEX_FILENAME = "index.parquet"

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("pid", pa.int64()),
        ("camid", pa.int32()),
        ("domain", pa.string()),
        ("split", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("converted_from", pa.string()),  # null when the original JPEG bytes are stored
        ("source", pa.string()),  # path of the original file relative to the dataset root
    ]
)
REQUIRED_COLUMNS = tuple(INDEX_SCHEMA.names)


def write_index(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write index rows (dicts with every column of :data:`INDEX_SCHEMA`) to ``path``."""
    columns = {name: [row[name] for row in rows] for name in INDEX_SCHEMA.names}
    table = pa.Table.from_pydict(columns, schema=INDEX_SCHEMA)
    pq.write_table(table, path, compression="zstd")


def _read_index_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise DataError(f"{path}: expected a parquet shard index, found no file")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read parquet shard index ({exc})") from exc
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: shard index is missing column(s) {', '.join(missing)}")
    try:
        table = table.select(list(REQUIRED_COLUMNS)).cast(INDEX_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: shard index columns have unexpected types ({exc})") from exc
    for name in REQUIRED_COLUMNS:
        if name != "converted_from" and table.column(name).null_count:
            raise DataError(f"{path}: shard index column {name!r} has null values")
    return table


class ShardIndex:
    """Rows of one or several dataset indexes, with numpy views for samplers.

    Build with :meth:`load`; narrow with :meth:`filter`. Row ``i`` of every array is sample ``i``.
    """

    def __init__(self, table: pa.Table, root: Path) -> None:
        self.table = table
        self.root = Path(root)
        self.keys: list[str] = table.column("key").to_pylist()
        self.shards: list[str] = table.column("shard").to_pylist()
        self.offsets: np.ndarray = table.column("offset").to_numpy().astype(np.int64)
        self.sizes: np.ndarray = table.column("size").to_numpy().astype(np.int64)
        self.sha256: list[str] = table.column("sha256").to_pylist()
        self.pids: np.ndarray = table.column("pid").to_numpy().astype(np.int64)
        self.camids: np.ndarray = table.column("camid").to_numpy().astype(np.int64)
        self.domains: np.ndarray = np.asarray(table.column("domain").to_pylist(), dtype=object)
        self.splits: np.ndarray = np.asarray(table.column("split").to_pylist(), dtype=object)
        self.widths: np.ndarray = table.column("width").to_numpy().astype(np.int64)
        self.heights: np.ndarray = table.column("height").to_numpy().astype(np.int64)

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, dataset_dirs: str | Path | Sequence[str | Path]) -> ShardIndex:
        """Read ``index.parquet`` of one dataset directory or several (concatenated in order)."""
        if isinstance(dataset_dirs, (str, Path)):
            dataset_dirs = [dataset_dirs]
        dirs = [Path(d).resolve() for d in dataset_dirs]
        if not dirs:
            raise DataError("ShardIndex.load: expected at least one dataset directory, got none")
        root = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0]
        tables = []
        seen_keys: dict[str, Path] = {}
        for directory in dirs:
            path = directory / INDEX_FILENAME
            table = _read_index_table(path)
            prefix = directory.relative_to(root).as_posix()
            if prefix != ".":
                shard = [f"{prefix}/{s}" for s in table.column("shard").to_pylist()]
                table = table.set_column(
                    table.schema.get_field_index("shard"), "shard", pa.array(shard, pa.string())
                )
            for key in table.column("key").to_pylist():
                if key in seen_keys:
                    raise DataError(f"{path}: sample key {key!r} also appears in {seen_keys[key]}")
                seen_keys[key] = path
            tables.append(table)
        return cls(pa.concat_tables(tables), root)

    def take(self, rows: np.ndarray | Sequence[int]) -> ShardIndex:
        """A new index holding ``rows`` (in that order)."""
        return ShardIndex(self.table.take(pa.array(np.asarray(rows, dtype=np.int64))), self.root)

    def filter(
        self, split: str | Iterable[str] | None = None, domain: str | Iterable[str] | None = None
    ) -> ShardIndex:
        """Rows whose split and domain are among the given ones (``None`` keeps all).

        Asking for a split or domain the index does not contain is an error, not an empty result.
        """
        mask = np.ones(len(self), dtype=bool)
        for column, wanted, values in (("split", split, self.splits), ("domain", domain, self.domains)):
            if wanted is None:
                continue
            wanted_set = {wanted} if isinstance(wanted, str) else set(wanted)
            present = set(values.tolist())
            absent = sorted(wanted_set - present)
            if absent:
                raise DataError(
                    f"shard index under {self.root}: no rows with {column} {', '.join(absent)}; "
                    f"available: {', '.join(sorted(present))}"
                )
            mask &= np.isin(values, list(wanted_set))
        return self.take(np.flatnonzero(mask))

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def domain_names(self) -> list[str]:
        """Sorted distinct domains; a domain's id is its position here."""
        return sorted(set(self.domains.tolist()))

    @property
    def domain_ids(self) -> np.ndarray:
        names = {name: i for i, name in enumerate(self.domain_names)}
        return np.asarray([names[d] for d in self.domains.tolist()], dtype=np.int64)

    def combined_training_rows(self) -> ShardIndex:
        """Every labelled image of every split ("combine all", the multi-source DG protocol).

        Train rows plus the query and gallery rows of identities that have a query image; gallery-only
        identities are the protocol's distractors (Market's ``0000``, PRID's one-camera people) and are
        left out, so no bogus class is made from unrelated people.
        """
        splits = self.splits
        is_query = splits == "query"
        query_keys = {
            (d, int(p)) for d, p in zip(self.domains[is_query].tolist(), self.pids[is_query].tolist())
        }
        keep = [
            i
            for i, (split, d, p) in enumerate(zip(splits.tolist(), self.domains.tolist(), self.pids.tolist()))
            if split == "train" or (split in ("query", "gallery") and (d, int(p)) in query_keys)
        ]
        return self.take(np.asarray(keep, dtype=np.int64))

    def camera_groups(self) -> tuple[np.ndarray, list[str]]:
        """Every row's camera as an id into the sorted names ``<domain>/c<camid>`` (camera ids are per domain)."""
        keys = [f"{d}/c{c}" for d, c in zip(self.domains.tolist(), self.camids.tolist(), strict=True)]
        names = sorted(set(keys))
        lookup = {name: i for i, name in enumerate(names)}
        return np.asarray([lookup[k] for k in keys], dtype=np.int64), names

    def global_pids(self) -> tuple[np.ndarray, dict[str, int]]:
        """:func:`global_pids` of this index's domains and pids."""
        return global_pids(self.domains, self.pids)

    def shard_files(self, split: str | None = None) -> list[str]:
        """Distinct shard paths (relative to :attr:`root`) in index order, optionally of one split."""
        rows = self.shards if split is None else [s for s, sp in zip(self.shards, self.splits) if sp == split]
        return list(dict.fromkeys(rows))

    def read_image_bytes(self, i: int, opener: Opener) -> bytes:
        """The stored image bytes of row ``i`` through ``opener`` (rooted at :attr:`root`)."""
        if not 0 <= i < len(self):
            raise IndexError(f"ShardIndex row {i} out of range (0..{len(self) - 1})")
        return opener.read_range(self.shards[i], int(self.offsets[i]), int(self.sizes[i]))


def global_pids(
    domains: Sequence[str] | np.ndarray, pids: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """Identity labels made global across datasets by prefixing the pid with its domain.

    Returns contiguous labels ``0..N-1`` (one per sample, ordered by sorted ``"<domain>_<pid>"``
    identity keys, pids compared numerically) and the mapping ``"<domain>_<pid>" -> label``.
    Camera ids are not touched: they stay per domain.
    """
    domains = np.asarray(domains, dtype=object)
    pids = np.asarray(pids)
    if domains.shape != pids.shape or domains.ndim != 1:
        raise DataError(
            f"global_pids: expected two 1-D arrays of equal length, got shapes {domains.shape} "
            f"and {pids.shape}"
        )
    pairs = sorted({(str(d), int(p)) for d, p in zip(domains.tolist(), pids.tolist())})
    mapping = {f"{d}_{p}": label for label, (d, p) in enumerate(pairs)}
    labels = np.fromiter(
        (mapping[f"{d}_{int(p)}"] for d, p in zip(domains.tolist(), pids.tolist())),
        dtype=np.int64,
        count=len(pids),
    )
    return labels, mapping
