"""Tiny synthetic embedding folders (clustered unit vectors, categories tied to clusters) for index tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


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
    """Write an embed-catalog style folder: part-*.parquet shards plus _manifest.json."""
    root.mkdir(parents=True, exist_ok=True)
    n, d = xb.shape
    shards = []
    for i, start in enumerate(range(0, n, shard_rows)):
        stop = min(n, start + shard_rows)
        cols = {
            "product_id": pa.array([f"p{r:06d}" for r in range(start, stop)]),
            "category": pa.array([str(c) for c in categories[start:stop]]),
            "image_path": pa.array([f"images/p{r:06d}.jpg" for r in range(start, stop)]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(xb[start:stop].ravel(), pa.float32()), d),
        }
        for name, values in (extra or {}).items():
            cols[name] = pa.array(list(values[start:stop]))
        name = f"part-{i:05d}.parquet"
        pq.write_table(pa.table(cols), root / name)
        shards.append({"name": name, "rows": stop - start})
    manifest = {"checkpoint_sha256": sha, "backbone": "efficientnet-lite0", "dim": d, "complete": complete,
                "shards": shards}
    (root / "_manifest.json").write_text(json.dumps(manifest))
    return root


CATEGORIES = ("shoes", "bags", "tops", "bottoms", "lamps")
