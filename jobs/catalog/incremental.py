"""`embed-catalog --incremental`: reuse the base folder's embeddings of unchanged images, record the delta.

A catalogue row is re-embedded when its product is new to the base folder or its image's sha256 differs
from the one stored beside its embedding there; every other row's embedding is copied from the base.
Once the new folder is complete, its rows are compared with the base's (image hash and every metadata
column): `_delta.parquet` lists the products added, changed (image or metadata) and removed (gone from
the catalogue, or whose new image was rejected), which is what `ctl update-index` applies.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.progress import progress_bar
from index.embedding_shards import (
    BASE_COLUMNS,
    EMBEDDING,
    IMAGE_HASH,
    EmbeddingsError,
    Manifest,
    read_manifest,
    read_metadata,
)
from jobs.catalog.catalog_images import read_image_bytes
from jobs.catalog.shard_writer import Rows

HASH_THREADS = 8          # reading files is I/O: threads overlap it (hashlib releases the GIL on large buffers)


class BaseFolder:
    """The complete embeddings folder an incremental run starts from: its rows, hashes and embeddings."""

    def __init__(self, root: str | Path, *, checkpoint_sha256: str, dim: int):
        self.manifest: Manifest = read_manifest(root)
        if self.manifest.checkpoint_sha256 != checkpoint_sha256:
            raise EmbeddingsError(f"--base {root} was embedded with another checkpoint (sha256 "
                                  f"{self.manifest.checkpoint_sha256[:12]}...): an incremental run reuses its "
                                  "embeddings, so it needs the same model; run a full embed-catalog instead")
        if self.manifest.dim != dim:
            raise EmbeddingsError(f"--base {root} holds {self.manifest.dim}-d embeddings, the checkpoint makes {dim}-d")
        self.table = read_metadata(self.manifest, [*BASE_COLUMNS, *self.manifest.extra_columns, IMAGE_HASH])
        sizes = np.array([rows for _, rows in self.manifest.shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def has_hashes(self) -> bool:
        return IMAGE_HASH in self.table.column_names and self.table.column(IMAGE_HASH).null_count < len(self.table)

    def embeddings(self, base_rows: np.ndarray) -> np.ndarray:
        """float32 embeddings of the given base rows (read shard by shard, the last two kept)."""
        base_rows = np.asarray(base_rows, dtype=np.int64)
        out = np.empty((len(base_rows), self.manifest.dim), np.float32)
        shard_of = np.searchsorted(self._starts, base_rows, side="right") - 1
        for s in np.unique(shard_of).tolist():
            sel = shard_of == s
            out[sel] = self._shard(s)[base_rows[sel] - self._starts[s]]
        return out

    def _shard(self, s: int) -> np.ndarray:
        if s not in self._cache:
            name = self.manifest.shards[s][0]
            col = pq.read_table(self.manifest.path(name), columns=[EMBEDDING]).column(0).combine_chunks()
            self._cache[s] = np.asarray(col.flatten(), dtype=np.float32).reshape(-1, self.manifest.dim)
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        self._cache.move_to_end(s)
        return self._cache[s]


def _sha256_or_none(path: str) -> str | None:
    try:
        return hashlib.sha256(read_image_bytes(path)).hexdigest()
    except Exception:  # noqa: BLE001 - an unreadable image is embedded (and rejected) by the engine
        return None


def hash_images(paths: list[str], *, progress: bool = True) -> np.ndarray:
    """sha256 of each image file (None where it cannot be read), with a progress bar."""
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        hashes = list(progress_bar(pool.map(_sha256_or_none, paths, chunksize=64), total=len(paths), unit="img",
                                   desc="hash images", disable=not progress))
    return np.array(hashes, dtype=object)


def reusable_rows(table: pa.Table, hashes: np.ndarray, base: BaseFolder) -> np.ndarray:
    """Per catalogue row, the base row whose embedding it reuses (same product, same image bytes), or -1."""
    at = pc.index_in(table.column("product_id"), value_set=base.table.column("product_id"))
    base_row = at.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    if not base.has_hashes:
        return np.full(len(table), -1, np.int64)
    base_hash = base.table.column(IMAGE_HASH).to_numpy(zero_copy_only=False)
    same = np.array([b >= 0 and h is not None and base_hash[b] == h
                     for b, h in zip(base_row, hashes, strict=True)], dtype=bool)
    return np.where(same, base_row, -1)


def reuse_loader(base: BaseFolder, reuse_from: np.ndarray, hashes: np.ndarray, shard_size: int):
    """reuse(k) for the shard writer: the rows of shard k taken from the base, with their embeddings."""
    def reuse(k: int) -> Rows:
        rows = np.arange(k * shard_size, min((k + 1) * shard_size, len(reuse_from)), dtype=np.int64)
        rows = rows[reuse_from[rows] >= 0]
        return Rows(rows, base.embeddings(reuse_from[rows]), hashes[rows])
    return reuse


def _differs(a: pa.ChunkedArray | None, b: pa.ChunkedArray | None, n: int) -> np.ndarray:
    """Row-wise 'not the same value' of two string columns (a missing column is all nulls)."""
    a = a if a is not None else pa.nulls(n, pa.string())
    b = b if b is not None else pa.nulls(n, pa.string())
    a, b = pc.cast(a, pa.string()), pc.cast(b, pa.string())
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.and_(pc.fill_null(pc.not_equal(a, b), True), pc.invert(both_null)).to_numpy(zero_copy_only=False)


def delta(base: pa.Table, new: pa.Table) -> tuple[list[str], list[str]]:
    """(product ids, change kinds) turning `base` into `new`: added, changed (image hash or metadata), removed."""
    at = pc.index_in(new.column("product_id"), value_set=base.column("product_id"))
    known = pc.is_valid(at).to_numpy(zero_copy_only=False)
    base_rows = pa.array(at.fill_null(0).to_numpy(zero_copy_only=False))
    aligned = base.take(base_rows)
    changed = np.zeros(len(new), dtype=bool)
    for col in sorted((set(new.column_names) | set(base.column_names)) - {"product_id"}):
        changed |= _differs(new.column(col) if col in new.column_names else None,
                            aligned.column(col) if col in aligned.column_names else None, len(new))
    new_ids = new.column("product_id").to_pylist()
    ids = [pid for pid, k in zip(new_ids, known, strict=True) if not k]
    ids += [pid for pid, k, c in zip(new_ids, known, changed, strict=True) if k and c]
    kinds = ["added"] * int((~known).sum()) + ["changed"] * int((known & changed).sum())
    gone = pc.invert(pc.is_in(base.column("product_id"), value_set=new.column("product_id")))
    removed = pc.filter(base.column("product_id"), gone).to_pylist()
    return ids + removed, kinds + ["removed"] * len(removed)
