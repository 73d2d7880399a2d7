"""Read and validate an embed-catalog folder: `_manifest.json` and the parquet shards it lists."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import ArtifactError

MANIFEST = "_manifest.json"
BASE_COLUMNS = ("product_id", "category", "image_path")
EMBEDDING = "embedding"
NORM_TOLERANCE = 1e-2


class EmbeddingsError(ArtifactError):
    """The embeddings folder cannot be indexed (missing, incomplete, inconsistent); the message says why."""


@dataclass(frozen=True)
class Manifest:
    """The embed-catalog job's manifest, with the shard files resolved and checked."""

    root: Path
    checkpoint_sha256: str
    backbone: str
    dim: int
    shards: tuple[tuple[str, int], ...]     # (file name, rows) in manifest order
    extra_columns: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return sum(rows for _, rows in self.shards)

    def path(self, name: str) -> Path:
        return self.root / name


def read_manifest(embeddings_dir: str | Path) -> Manifest:
    """Load `_manifest.json`, refuse incomplete or inconsistent folders, check every listed shard's schema."""
    root = Path(embeddings_dir)
    if not root.is_dir():
        raise EmbeddingsError(f"embeddings folder {root} does not exist (run `ctl embed-catalog` first)")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise EmbeddingsError(f"{mpath} is missing: {root} is not a finished embed-catalog output")
    try:
        raw = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EmbeddingsError(f"{mpath} is not valid JSON: {e}") from None
    missing = [key for key in ("checkpoint_sha256", "backbone", "dim", "complete", "shards") if key not in raw]
    if missing:
        raise EmbeddingsError(f"{mpath} lacks the field(s) {', '.join(missing)}")
    if raw["complete"] is not True:
        raise EmbeddingsError(f"{mpath} says complete=false: the embed-catalog job has not finished "
                              "(resume it before building the index)")
    dim = raw["dim"]
    if not isinstance(dim, int) or dim <= 0:
        raise EmbeddingsError(f"{mpath}: dim must be a positive integer, got {dim!r}")
    shards = []
    for entry in raw["shards"]:
        name, rows = entry.get("name"), entry.get("rows")
        if not isinstance(name, str) or Path(name).name != name or not isinstance(rows, int) or rows < 0:
            raise EmbeddingsError(f"{mpath}: bad shard entry {entry!r} (want a file name and a row count)")
        shards.append((name, rows))
    if not shards or sum(r for _, r in shards) == 0:
        raise EmbeddingsError(f"{mpath} lists no rows: nothing to index")
    extras: list[str] = []
    for name, rows in shards:
        for col in _check_shard(root / name, dim, rows):
            if col not in extras:
                extras.append(col)
    return Manifest(root, str(raw["checkpoint_sha256"]), str(raw["backbone"]), dim, tuple(shards), tuple(extras))


def _check_shard(path: Path, dim: int, rows: int) -> list[str]:
    """Schema and row-count checks from the parquet footer only; returns the extra columns."""
    if not path.is_file():
        raise EmbeddingsError(f"shard {path.name} is listed in the manifest but missing from {path.parent}")
    try:
        meta = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise EmbeddingsError(f"shard {path.name} is not a readable parquet file: {e}") from None
    schema = meta.schema_arrow
    absent = [c for c in (*BASE_COLUMNS, EMBEDDING) if c not in schema.names]
    if absent:
        raise EmbeddingsError(f"shard {path.name} lacks column(s) {', '.join(absent)}")
    etype = schema.field(EMBEDDING).type
    if not pa.types.is_fixed_size_list(etype) or not pa.types.is_floating(etype.value_type):
        raise EmbeddingsError(f"shard {path.name}: column embedding must be fixed_size_list<float32>[{dim}], "
                              f"got {etype}")
    if etype.list_size != dim:
        raise EmbeddingsError(f"shard {path.name} has {etype.list_size}-d embeddings but the manifest "
                              f"(and the other shards) say dim={dim}")
    if meta.metadata.num_rows != rows:
        raise EmbeddingsError(f"shard {path.name} holds {meta.metadata.num_rows} rows but the manifest "
                              f"says {rows}")
    return [c for c in schema.names if c not in (*BASE_COLUMNS, EMBEDDING)]


def iter_embeddings(manifest: Manifest, *, batch_rows: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first row, float32 block of shape (b, dim)) over all shards in order, streaming batches."""
    start = 0
    d = manifest.dim
    for name, _ in manifest.shards:
        pf = pq.ParquetFile(manifest.path(name))
        row_in_shard = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[EMBEDDING]):
            col = batch.column(0)
            if col.null_count:
                raise EmbeddingsError(f"shard {name} has {col.null_count} null embedding(s)")
            xb = np.ascontiguousarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
            xb = xb.reshape(-1, d)
            _check_block(xb, name, row_in_shard)
            yield start, xb
            start += len(xb)
            row_in_shard += len(xb)


def _check_block(xb: np.ndarray, name: str, row0: int) -> None:
    finite = np.isfinite(xb).all(axis=1)
    if not finite.all():
        raise EmbeddingsError(f"shard {name} row {row0 + int(np.argmin(finite))} has a non-finite embedding")
    norms = np.linalg.norm(xb, axis=1)
    bad = np.abs(norms - 1.0) > NORM_TOLERANCE
    if bad.any():
        i = int(np.argmax(bad))
        raise EmbeddingsError(f"shard {name} row {row0 + i} has norm {norms[i]:.4f}; embeddings must be "
                              "L2-normalised for inner-product search")


def read_metadata(manifest: Manifest) -> pa.Table:
    """All non-embedding columns of all shards, row-aligned with `iter_embeddings`."""
    columns = [*BASE_COLUMNS, *manifest.extra_columns]
    tables = []
    for name, _ in manifest.shards:
        have = pq.ParquetFile(manifest.path(name)).schema_arrow.names
        tables.append(pq.read_table(manifest.path(name), columns=[c for c in columns if c in have]))
    tables = [t.cast(pa.schema([pa.field(f.name, pa.string()) if f.name in BASE_COLUMNS else f
                                for f in t.schema])) for t in tables]
    table = pa.concat_tables(tables, promote_options="default")
    for c in BASE_COLUMNS:
        if table.column(c).null_count:
            raise EmbeddingsError(f"column {c} has {table.column(c).null_count} null value(s)")
    return table.select(columns)
