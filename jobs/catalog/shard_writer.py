"""The embed-catalog writer: a background thread that assembles each shard once all its rows are in and writes it.

Writing overlaps compute: the main loop hands finished batches to a bounded queue; the thread files
each row under its shard (row // shard size), and when a shard's last row (embedded or rejected)
arrives it writes the shard and its rejects, then records it in the manifest (index.embedding_shards).
An incremental run also hands it rows whose embeddings are reused from the base folder: `reuse(k)`
loads them when shard k is written, and shards made only of reused rows are written first.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from index.embedding_shards import EmbeddingsManifest, record_shard, write_shard


class Rows(NamedTuple):
    """Embedded catalogue rows: row numbers, float32 (n, d) unit embeddings, sha256 of each image."""

    rows: np.ndarray
    embeddings: np.ndarray
    hashes: np.ndarray


class ShardWriter(threading.Thread):
    """Collects embedded batches, writes each shard once complete, then records it in the manifest."""

    def __init__(self, out_dir: Path, table: pa.Table, manifest: EmbeddingsManifest, shard_rows: dict[int, int],
                 dim: int, *, reuse: Callable[[int], Rows] | None = None):
        super().__init__(name="embed-catalog-writer", daemon=True)
        self.out_dir = out_dir
        self.table = table            # the catalogue: product_id, category, image_path, extras (strings)
        self.manifest = manifest
        self.shard_size = manifest.shard_size
        self.remaining = dict(shard_rows)   # shard -> rows still to come from the engine (0: all reused)
        self.dim = dim
        self.reuse = reuse
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.written = 0
        self._parts: dict[int, list] = {k: [] for k in shard_rows}      # (rows, embeddings) pieces
        self._rejects: dict[int, list] = {k: [] for k in shard_rows}

    # main thread side
    def put(self, rows, embeddings, ready, rejects, hashes) -> None:
        """Queue one batch: its rows, their embeddings (CPU tensor or array; `ready` a CUDA event or None),
        its rejects [(row, reason)] and the sha256 of each embedded row's image."""
        while True:
            self.check()
            try:
                self.queue.put((rows, embeddings, ready, rejects, hashes), timeout=0.5)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        self.check()
        if any(self.remaining.values()):
            raise RuntimeError(f"embed-catalog: rows missing from shards {[k for k, n in self.remaining.items() if n]}")

    def abandon(self) -> None:
        """Stop the thread without finishing shards (the main loop failed)."""
        if self.is_alive():
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=10)
            self.join(timeout=10)

    # writer thread side
    def run(self) -> None:
        try:
            for k in sorted(k for k, n in self.remaining.items() if n == 0):
                self._write_shard(k)          # nothing to embed in it: every row is reused
            while (item := self.queue.get()) is not None:
                self._take(*item)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
            while self.queue.get() is not None:   # keep draining so the main thread never blocks
                pass

    def _take(self, rows, embeddings, ready, rejects, hashes) -> None:
        if ready is not None:
            ready.synchronize()       # the device -> host copy of `embeddings` has landed
        rows = np.asarray(rows, dtype=np.int64)
        if embeddings is None:
            embeddings = np.zeros((0, self.dim), np.float32)
        embeddings = np.asarray(embeddings, np.float32)
        hashes = np.asarray(hashes, dtype=object)
        counts: dict[int, int] = {}
        for row, reason in rejects:
            k = row // self.shard_size
            self._rejects[k].append((row, reason))
            counts[k] = counts.get(k, 0) + 1
        shards = rows // self.shard_size
        for k in np.unique(shards).tolist():
            sel = shards == k
            self._parts[k].append(Rows(rows[sel], embeddings[sel], hashes[sel]))
            counts[k] = counts.get(k, 0) + int(sel.sum())
        for k in sorted(counts):
            self.remaining[k] -= counts[k]
            if self.remaining[k] < 0:
                raise RuntimeError(f"shard {k} received more rows than it holds")
            if self.remaining[k] == 0:
                self._write_shard(k)

    def _write_shard(self, k: int) -> None:
        parts = self._parts.pop(k)
        if self.reuse is not None:
            parts.append(self.reuse(k))
        rejects = sorted(self._rejects.pop(k))
        rows = np.concatenate([p.rows for p in parts]) if parts else np.zeros(0, np.int64)
        emb = np.concatenate([p.embeddings for p in parts]) if parts else np.zeros((0, self.dim), np.float32)
        hashes = np.concatenate([p.hashes for p in parts]) if parts else np.zeros(0, object)
        order = np.argsort(rows, kind="stable")
        rows, emb, hashes = rows[order], emb[order], hashes[order]
        pid, path = self.table.column("product_id"), self.table.column("image_path")
        entry = write_shard(self.out_dir, k, self.table.take(pa.array(rows, pa.int64())), emb,
                            checkpoint_sha256=self.manifest.checkpoint_sha256,
                            rejects=[(pid[r].as_py(), path[r].as_py(), reason) for r, reason in rejects],
                            image_sha256=hashes.tolist())
        record_shard(self.out_dir, self.manifest, entry)
        self.written += 1
