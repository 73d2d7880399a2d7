"""Atomic parquet writes: a reader never sees half a table (temp name beside the target, then rename)."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from common.files import atomic_path


def write_parquet_atomic(path: str | os.PathLike, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
