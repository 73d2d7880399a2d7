"""A build's row metadata: ids.arrow (Arrow IPC) and category_rows.npy, memory-mapped; format 1's ids.parquet."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.files import atomic_path
from index.layout import (
    CATEGORY_ROWS_FILE,
    FILES,
    IDS_FILE,
    INFO_FILE,
    IVFDATA_FILE,
    LEGACY_IDS_FILE,
    IndexDirError,
    IndexInfo,
    row_files,
)

# Record batches of at most this many rows: a string column's int32 offsets stay far from 2 GiB, and a
# take() of a few rows touches only the batches it needs.
BATCH_ROWS = 1 << 20


@dataclass(frozen=True)
class RowMetadata:
    """Row -> product metadata (`table`) and the rows of each category, however the build stored them.

    From a format-2 build both are views of memory-mapped files (the page cache holds what is read, the
    process's anonymous memory does not grow with the catalogue); from a format-1 build they are in RAM.
    """

    table: pa.Table
    categories: tuple[str, ...]        # sorted
    category_rows: np.ndarray          # every row once, grouped by category (in `categories` order), ascending
    bounds: np.ndarray                 # category j's rows: category_rows[bounds[j]:bounds[j + 1]]

    @property
    def n(self) -> int:
        return self.table.num_rows

    def rows(self, j: int) -> np.ndarray:
        """Sorted rows of the j-th category (read-only)."""
        return self.category_rows[self.bounds[j]:self.bounds[j + 1]]

    def counts(self) -> dict[str, int]:
        return dict(zip(self.categories, np.diff(self.bounds).tolist(), strict=True))

    def codes(self) -> np.ndarray:
        """Each row's category number (index into `categories`): built on demand, O(N) memory while used."""
        out = np.empty(self.n, dtype=np.int32)
        for j in range(len(self.categories)):
            out[self.rows(j)] = j
        return out


def group_by_category(table: pa.Table) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(sorted category names, rows grouped by category, bounds) of a metadata table."""
    encoded = table.column("category").cast(pa.string()).dictionary_encode().combine_chunks()
    names = [str(c) for c in encoded.dictionary.to_pylist()]
    order_of_name = np.argsort(np.array(names, dtype=object), kind="stable")
    rank = np.empty(len(names), dtype=np.int64)
    rank[order_of_name] = np.arange(len(names))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    rows = np.argsort(codes, kind="stable").astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))]).astype(np.int64)
    return tuple(names[j] for j in order_of_name), rows, bounds


def write_row_metadata(build_dir: Path, table: pa.Table) -> RowMetadata:
    """Write ids.arrow and category_rows.npy into a build folder (atomically); return them (in RAM)."""
    categories, rows, bounds = group_by_category(table)
    with atomic_path(build_dir / IDS_FILE) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=BATCH_ROWS)
    with atomic_path(build_dir / CATEGORY_ROWS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, rows)
    return RowMetadata(table, categories, rows, bounds)


def read_table(build_dir: Path, format_version: int) -> pa.Table:
    """The metadata table of a build, memory-mapped (format 2) or read into RAM (format 1)."""
    if format_version < 2:
        return pq.read_table(build_dir / LEGACY_IDS_FILE)
    path = build_dir / IDS_FILE
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise IndexDirError(f"{path} is not a readable Arrow file ({str(exc)[:120]}); rebuild the index") from None


def open_row_metadata(build_dir: Path, format_version: int, counts: dict[str, int]) -> RowMetadata:
    """A build's row metadata; `counts` (info.json's rows per category) gives format 2's category bounds."""
    table = read_table(build_dir, format_version)
    if format_version < 2:
        categories, rows, bounds = group_by_category(table)
        rows.flags.writeable = False
        return RowMetadata(table, categories, rows, bounds)
    path = build_dir / CATEGORY_ROWS_FILE
    try:
        rows = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise IndexDirError(f"{path} is not a readable .npy file ({str(exc)[:120]}); rebuild the index") from None
    categories = tuple(sorted(counts))
    bounds = np.concatenate([[0], np.cumsum([counts[c] for c in categories])]).astype(np.int64)
    if rows.ndim != 1 or len(rows) != table.num_rows or int(bounds[-1]) != table.num_rows:
        raise IndexDirError(f"{build_dir} is inconsistent: {IDS_FILE} has {table.num_rows} rows, "
                            f"{CATEGORY_ROWS_FILE} {rows.shape}, info.json counts {int(bounds[-1])}; rebuild the index")
    return RowMetadata(table, categories, rows, bounds)


def copy_as_format(build_dir: Path, dst_dir: Path, format_version: int) -> Path:
    """A copy of a build in another format: 1 (ids.parquet, read into RAM) or 2 (memory-mapped row files).

    For a rollback to a release that reads only format 1, an upgrade of a format-1 build, and comparing
    the two formats on one index (bench/bench_scale.py). The index, lists and embeddings are hard-linked."""
    if format_version not in (1, 2):
        raise ValueError(f"format_version must be 1 or 2, got {format_version}")
    info = IndexInfo.read(build_dir)
    dst_dir.mkdir(parents=True)
    for name in os.listdir(build_dir):
        if name in (*row_files(1), *row_files(2), INFO_FILE) or name.startswith("."):
            continue
        os.link(build_dir / name, dst_dir / name)
    table = read_table(build_dir, info.format_version)
    if format_version == 1:
        pq.write_table(table, dst_dir / LEGACY_IDS_FILE)
    else:
        write_row_metadata(dst_dir, table)
    files = [f for f in FILES if f not in row_files(2)]
    files[1:1] = row_files(format_version)
    info.replace(format_version=format_version, files=files + ([IVFDATA_FILE] if info.ondisk else [])).write(dst_dir)
    return dst_dir
