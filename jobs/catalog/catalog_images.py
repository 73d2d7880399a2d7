"""The embed-catalog reader: catalogue rows -> decoded, resized image batches, a bad image a reject with its reason."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import torch

from common.errors import InputError
from index.embedding_shards import BASE_COLUMNS, EMBEDDING
from jobs.data.catalog_manifest import read_catalog
from pipeline.images import ImageError, image_to_tensor, load_image


def short_reason(path: str, message: str) -> str:
    """ImageError messages start with the path, which the reject line carries already."""
    for prefix in (f"{path}: ", f"{Path(path)}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


class CatalogImages:
    """Map-style dataset over catalogue rows: index -> (row, uint8 3 x size x size tensor | None, reason | None)."""

    def __init__(self, paths: Sequence[str], rows: Sequence[int], size: int):
        self.paths = paths
        self.rows = rows
        self.size = size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        path = self.paths[row]
        try:
            return row, image_to_tensor(load_image(path), self.size), None
        except ImageError as exc:
            return row, None, short_reason(path, str(exc))
        except Exception as exc:  # noqa: BLE001 - one odd file must never stop the job
            return row, None, f"cannot decode ({type(exc).__name__}: {exc})"


@dataclass
class Batch:
    rows: list[int]                  # catalogue rows of `images`, in order
    images: torch.Tensor | None      # uint8 N x 3 x H x W, or None when every image was rejected
    rejects: list[tuple[int, str]]   # (catalogue row, reason)

    def pin_memory(self):            # called by the DataLoader's pinning thread when pin_memory=True
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate(items) -> Batch:
    good = [(row, img) for row, img, _ in items if img is not None]
    rejects = [(row, reason) for row, img, reason in items if img is None]
    images = torch.stack([img for _, img in good]) if good else None
    return Batch([row for row, _ in good], images, rejects)


def _string_column(col):
    if pa.types.is_string(col.type):
        return col
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else json.dumps(v, sort_keys=True, default=str) for v in col.to_pylist()],
                        pa.string())


def load_catalog_table(manifest: Path, limit: int | None) -> pa.Table:
    """The catalogue rows to embed: base columns first, every other column as strings (carried to results)."""
    table = read_catalog(manifest)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1, got {limit}")
        table = table.slice(0, limit)
    if EMBEDDING in table.column_names:
        raise InputError(f"{manifest}: column {EMBEDDING!r} clashes with the output column; rename it")
    extras = [c for c in table.column_names if c not in BASE_COLUMNS]
    columns = {c: _string_column(table.column(c)) for c in (*BASE_COLUMNS, *extras)}
    return pa.table(columns).combine_chunks()
