"""Tiny synthetic embedding folders (clustered unit vectors, categories tied to clusters) for index tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from index.embedding_shards import EmbeddingsManifest, record_shard, write_manifest, write_shard


def clustered(n: int, d: int, *, n_clusters: int = 50, spread: float = 0.5, seed: int = 0):
    """Unit vectors around `n_clusters` random centres; returns (xb, cluster id per row)."""
    rs = np.random.RandomState(seed)
    centres = rs.randn(n_clusters, d).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rs.randint(0, n_clusters, size=n)
    xb = centres[labels] + rs.randn(n, d).astype(np.float32) * (spread / np.sqrt(d))
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    return xb.astype(np.float32), labels


def write_embeddings(root: Path, xb: np.ndarray, categories, *, shard_rows: int = 1000,
                     complete: bool = True, sha: str = "a" * 64, extra: dict | None = None) -> Path:
    """Write an embeddings folder through the contract's own writer: part-*.parquet shards plus _manifest.json."""
    root.mkdir(parents=True, exist_ok=True)
    n, d = xb.shape
    manifest = EmbeddingsManifest(checkpoint_sha256=sha, backbone="efficientnet-lite0", dim=d, shard_size=shard_rows,
                                  complete=complete)
    for i, start in enumerate(range(0, n, shard_rows)):
        stop = min(n, start + shard_rows)
        cols = {
            "product_id": pa.array([f"p{r:06d}" for r in range(start, stop)]),
            "category": pa.array([str(c) for c in categories[start:stop]]),
            "image_path": pa.array([f"images/p{r:06d}.jpg" for r in range(start, stop)]),
        }
        for name, values in (extra or {}).items():
            cols[name] = pa.array(list(values[start:stop]))
        record_shard(root, manifest, write_shard(root, i, pa.table(cols), xb[start:stop], checkpoint_sha256=sha))
    write_manifest(root, manifest)
    return root


CATEGORIES = ("shoes", "bags", "tops", "bottoms", "lamps")
