"""ProductIndex: load an index directory (memory-mapped) and search it, optionally within one category."""
from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from common.errors import ArtifactError
from index.layout import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    IVFDATA_FILE,
    READABLE_FORMATS,
    IndexDirError,
    IndexInfo,
    resolve,
    row_files,
)
from index.rows import RowMetadata, open_row_metadata
from index.search import (
    PAD_SCORE,
    SMALL_BATCH,
    bitmap_selector,
    exact_search,
    filtered_search,
    flat_view,
    index_kind,
    knn_ip,
    list_counts,
    search,
    small_batch_scores,
    supports_selector,
    topk_from_scores,
)


class CheckpointMismatchError(ArtifactError):
    """The index was built from embeddings of another checkpoint than the model in use."""


class ProductIndex:
    """A built product index: FAISS index + row metadata + float16 embeddings for exact scoring."""

    # categories up to this many rows are searched exactly (brute force over their float16 rows, in a
    # cached IndexFlatIP): ~0.3 ms per query for 10k rows at d=128, and no filtered-search recall loss
    exact_category_max_rows = 16_384
    # float32 copies of those small categories are cached up to this many bytes (beyond: rebuilt per call)
    exact_cache_bytes = 256 * 2**20

    def __init__(self, index_dir: Path, index: faiss.Index, rows: RowMetadata, embeddings: np.ndarray,
                 info: IndexInfo, *, mmap: bool, version: str | None = None):
        self.index_dir = Path(index_dir)     # the folder of this build's files
        self.version = version               # its name under the index directory, None for a flat directory
        self.faiss_index = index
        self.mmap = mmap
        self._table = rows.table
        self._row_metadata = rows
        self._emb = embeddings
        self._info = info
        self._kind = index_kind(index)
        self._params = dict(info.search_params)
        self._category_params = dict(info.category_search_params or self._params)
        # views of the (memory-mapped, read-only) grouped rows: nothing here is O(N) in RAM
        self._categories = list(rows.categories)
        self._rows = {name: rows.rows(j) for j, name in enumerate(self._categories)}
        self._selectors: dict[str, tuple] = {}
        self._list_counts: np.ndarray | None = None
        self._exact_cache: dict[str, np.ndarray] = {}
        self._exact_cache_used = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, index_dir: str | Path, *, mmap: bool = True) -> ProductIndex:
        """Open the current build of an index directory (see index.layout); index.faiss is memory-mapped where
        FAISS allows (IO_FLAG_MMAP_IFC).

        FAISS 1.15 maps the vectors/codes of Flat, IVF (inverted lists) and HNSW (storage; the graph
        links are read into RAM) indexes; where mapping fails the file is read normally (`mmap` False).
        An index built with --ondisk keeps its lists in index.ivfdata beside index.faiss, always mapped.
        """
        build, version = resolve(index_dir)
        info = IndexInfo.read(build)
        root = build
        if info.format_version not in READABLE_FORMATS:
            raise IndexDirError(f"{root}: index format {info.format_version!r} is not one this version reads "
                                f"({', '.join(map(str, READABLE_FORMATS))}); rebuild it")
        ondisk = info.ondisk
        ids_files = row_files(info.format_version)
        for name in (INDEX_FILE, *ids_files, EMBEDDINGS_FILE, *([IVFDATA_FILE] if ondisk else [])):
            if not (root / name).is_file():
                raise IndexDirError(f"{root} lacks {name}; rebuild the index")
        index, mapped = _read_index(root / INDEX_FILE, mmap, ondisk=ondisk)
        rows = open_row_metadata(root, info.format_version, info.counts_per_category)
        emb = np.load(root / EMBEDDINGS_FILE, mmap_mode="r")
        n, d = info.n, info.dim
        sizes = {"index.faiss": index.ntotal, ids_files[0]: rows.n, EMBEDDINGS_FILE: emb.shape[0]}
        if any(v != n for v in sizes.values()) or index.d != d or emb.shape[1] != d:
            raise IndexDirError(f"{root} is inconsistent: info.json says n={n}, d={d} but found rows {sizes}, "
                                f"index d={index.d}, embeddings d={emb.shape[1]}; rebuild the index")
        return cls(root, index, rows, emb, info, mmap=mapped, version=version)

    # ------------------------------------------------------------------ metadata
    @property
    def info(self) -> IndexInfo:
        return self._info

    @property
    def n(self) -> int:
        return self._info.n

    @property
    def dim(self) -> int:
        return self._info.dim

    @property
    def categories(self) -> list[str]:
        return sorted(self._categories)

    @property
    def product_ids(self) -> np.ndarray:
        """Every product id, as a numpy array of N Python strings (O(N) memory: for tests and tools)."""
        return self._table.column("product_id").to_numpy(zero_copy_only=False)

    @property
    def table(self) -> pa.Table:
        """Row -> product_id, category, image_path and carried extra columns (memory-mapped from format 2 on)."""
        return self._table

    def rows_for_category(self, category: str) -> np.ndarray:
        """Sorted row ids of one category (read-only). Unknown category -> ValueError listing known ones."""
        try:
            return self._rows[category]
        except KeyError:
            raise ValueError(f"unknown category {category!r}; known: {', '.join(self.categories)}") from None

    def embeddings(self, rows) -> np.ndarray:
        """float32 copy of the given rows of embeddings.f16.npy."""
        return np.asarray(self.stored_embeddings(rows), dtype=np.float32)

    def stored_embeddings(self, rows) -> np.ndarray:
        """Copy of the given rows of embeddings.f16.npy as stored (float16), for a caller with a faster cast
        (numpy's float16 -> float32 took 0.41 ms for 1,600 x 128 values, torch's 0.016 ms: a look's stage 2)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise ValueError(f"rows must lie in [0, {self.n}), got min {rows.min()} max {rows.max()}")
        return self._emb[rows]

    def require_checkpoint(self, sha256: str) -> None:
        """Raise CheckpointMismatchError unless the index was built from this checkpoint."""
        built = self._info.checkpoint_sha256
        if built != sha256:
            raise CheckpointMismatchError(
                f"index {self.index_dir} was built from checkpoint sha256 {built} but the model in use is "
                f"{sha256}; re-embed the catalogue and rebuild the index with this checkpoint")

    # ------------------------------------------------------------------ search
    def searches_exactly(self, category: str | None = None) -> bool:
        """Whether search(category=...) scores every row it may return (every row, without a category) by the
        exact inner product of the stored vectors: a Flat index, or a category brute-forced as search() does it
        (small, or an index FAISS cannot filter). Such a search returns the true top k, not an approximation."""
        if self._kind == "flat":
            return True
        if category is None:
            return False
        return len(self.rows_for_category(category)) <= self.exact_category_max_rows or \
            not supports_selector(self.faiss_index)

    def search(self, xq: np.ndarray, k: int, *, category: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product: D (nq, k) float32 scores, I (nq, k) int64 rows, -1/-inf padding.

        With `category`, only that category's rows come back, k of them whenever it has k. Flat: exact
        over a cached float32 block of the category's rows. Other indexes: small categories
        (<= exact_category_max_rows) and index types FAISS cannot filter are searched exactly over their
        float16 rows; large ones through the index with an IDSelector (category-aware probing for IVF)
        and the category search parameters tuned at build time.
        """
        xq = self._check_queries(xq)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if category is None:
            return search(self.faiss_index, xq, k, self._params, embeddings=self._emb)
        rows = self.rows_for_category(category)
        if self._kind == "flat":
            block_bytes = len(rows) * self.dim * 4
            if category in self._exact_cache or self._exact_cache_used + block_bytes <= self.exact_cache_bytes:
                return self._exact_in_category(xq, k, category)
        elif len(rows) <= self.exact_category_max_rows or not supports_selector(self.faiss_index):
            return self._exact_in_category(xq, k, category)
        per_list = None
        if self._kind == "ivf":
            per_list = self._category_list_counts()[:, self._categories.index(category)]
        D, neighbours = filtered_search(self.faiss_index, xq, k, self._category_params, sel=self._selector(category),
                               embeddings=self._emb, per_list=per_list)
        return self._fill_short_rows(xq, k, rows, D, neighbours)

    def search_categories(self, xq: np.ndarray, k: int, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows of several categories, each category's rows scored by its own query: xq B x K x d (query j
        for categories[j]) -> D, I (B x k), -inf / -1 padding.

        For queries that differ per category (stage 1 by the hybrid, retrieval.retriever). Flat: every row of
        the categories scored in one pass over their cached float32 blocks and one top-k (a flat query's stage
        1 took 0.93 ms as one search per category and a merge, 2,500 products, 2 cores: docs/quality.md, seventh
        round). Other indexes, or blocks the cache cannot hold: each category searched as search(category=c)
        does, the k best of them all kept.
        """
        xq = np.asarray(xq, dtype=np.float32)
        if xq.ndim != 3 or xq.shape[1:] != (len(categories), self.dim):
            raise ValueError(f"queries must have shape (nq, {len(categories)}, {self.dim}), got {xq.shape}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        rows = [self.rows_for_category(c) for c in categories]
        if self._kind == "flat" and self._blocks_fit(categories):
            blocks = [self._exact_block(c) for c in categories]
            S = np.empty((len(xq), sum(len(r) for r in rows)), dtype=np.float32)
            start = 0
            for j, block in enumerate(blocks):
                part = S[:, start:start + len(block)]
                if len(xq) < SMALL_BATCH:
                    for i in range(len(xq)):
                        small_batch_scores(xq[i:i + 1, j], block, out=part[i:i + 1])
                else:
                    np.matmul(xq[:, j], block.T, out=part)
                start += len(block)
            return topk_from_scores(S, int(k), np.concatenate(rows))
        found = [self.search(xq[:, j], min(int(k), len(r)), category=c)
                 for j, (c, r) in enumerate(zip(categories, rows, strict=True)) if len(r)]
        if not found:
            return topk_from_scores(np.empty((len(xq), 0), np.float32), int(k))
        D, cols = topk_from_scores(np.hstack([D for D, _ in found]), int(k))
        every = np.hstack([n for _, n in found])
        neighbours = np.where(cols >= 0, np.take_along_axis(every, np.maximum(cols, 0), 1), -1)
        D[neighbours < 0] = PAD_SCORE
        return D, neighbours

    def _blocks_fit(self, categories: Sequence[str]) -> bool:
        """Whether every category's float32 block is cached or fits the exact cache's budget."""
        with self._lock:
            missing = [c for c in dict.fromkeys(categories) if c not in self._exact_cache]
            return self._exact_cache_used + sum(len(self._rows[c]) for c in missing) * self.dim * 4 \
                <= self.exact_cache_bytes

    def _check_queries(self, xq) -> np.ndarray:
        xq = np.asarray(xq, dtype=np.float32)
        if xq.ndim == 1:
            xq = xq[None, :]
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (nq, {self.dim}), got {xq.shape}")
        return np.ascontiguousarray(xq)

    def _selector(self, category: str):
        with self._lock:
            if category not in self._selectors:
                self._selectors[category] = bitmap_selector(self._rows[category], self.n)
            return self._selectors[category][0]

    def _category_list_counts(self) -> np.ndarray:
        """(nlist, n_categories) count of each category's rows in each inverted list."""
        with self._lock:
            if self._list_counts is None:
                # the row -> category codes are built for this one pass and dropped (O(N) while it runs)
                self._list_counts = list_counts(self.faiss_index, self._row_metadata.codes(), len(self._categories))
            return self._list_counts

    def _exact_in_category(self, xq: np.ndarray, k: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the category's rows, from a cached float32 block of them.

        The block comes from the Flat index's own float32 vectors (exact) or else from the float16
        embeddings (float32 maths on float16 values).
        """
        return knn_ip(xq, self._exact_block(category), k, self._rows[category])

    def _exact_block(self, category: str) -> np.ndarray:
        """The category's rows as one float32 block, cached while the exact cache's budget allows."""
        rows = self._rows[category]
        with self._lock:
            block = self._exact_cache.get(category)
        if block is None:
            view = flat_view(self.faiss_index)
            block = np.ascontiguousarray(view[rows] if view is not None else self._emb[rows], dtype=np.float32)
            with self._lock:
                fits = self._exact_cache_used + block.nbytes <= self.exact_cache_bytes
                if category not in self._exact_cache and fits:
                    self._exact_cache[category] = block
                    self._exact_cache_used += block.nbytes
        return block

    def _fill_short_rows(self, xq, k, rows, D, neighbours):
        """Queries that came back with padding although the category has k rows get an exact search."""
        short = (neighbours < 0).any(axis=1) & (len(rows) > (neighbours >= 0).sum(axis=1))
        if short.any():
            D[short], neighbours[short] = exact_search(xq[short], self._emb[rows], k, rows)
        D[neighbours < 0] = PAD_SCORE
        return D, neighbours

    def __repr__(self) -> str:
        return (f"ProductIndex({str(self.index_dir)!r}, n={self.n}, dim={self.dim}, "
                f"factory={self._info.factory!r}, mmap={self.mmap})")


def _read_index(path: Path, mmap: bool, *, ondisk: bool = False) -> tuple[faiss.Index, bool]:
    """Memory-map the index file where the index type allows it, else read it into RAM.

    On-disk inverted lists are opened from the index file's own folder (IO_FLAG_ONDISK_SAME_DIR), so a
    build folder still loads after it is copied or moved."""
    if ondisk:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR), True
        except RuntimeError as exc:
            raise IndexDirError(f"{path.parent}: cannot open the on-disk inverted lists "
                                f"({str(exc).splitlines()[0][:200]}); rebuild the index") from None
    if mmap:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC), True
        except RuntimeError:
            pass
    return faiss.read_index(str(path)), False
