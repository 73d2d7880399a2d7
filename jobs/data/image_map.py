"""DIR/images.parquet, the fetcher's url -> local file map: its writer, its reader, and image resolution.

A scene's or product's image is its own ``image_path`` when set, otherwise the map's entry for its
``image_url``. Paths are stored relative to DIR when the file lies inside it, else absolute.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.parquet import write_parquet_atomic
from jobs.data.image_cache import CacheEntry
from jobs.data.layouts import IMAGES


def stored_path(path: str | Path, root: Path) -> str:
    """A local image path as the manifests store it: relative to DIR when inside it, else as given."""
    try:
        return Path(path).relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def write_image_map(root: Path, images: Iterable[CacheEntry]) -> None:
    """Write DIR/images.parquet: one row per cached image (url, image_path, sha256, bytes, width, height)."""
    images = list(images)
    write_parquet_atomic(root / IMAGES, pa.table({
        "url": pa.array([e.url for e in images], pa.string()),
        "image_path": pa.array([stored_path(e.path, root) for e in images], pa.string()),
        "sha256": pa.array([e.sha256 for e in images], pa.string()),
        "bytes": pa.array([e.bytes for e in images], pa.int64()),
        "width": pa.array([e.width for e in images], pa.int32()),
        "height": pa.array([e.height for e in images], pa.int32()),
    }))


def read_image_map(root: Path) -> dict[str, str]:
    """url -> image path (as stored: relative to root or absolute) from DIR/images.parquet."""
    if not (root / IMAGES).exists():
        return {}
    t = pq.read_table(root / IMAGES, columns=["url", "image_path"])
    return dict(zip(t.column("url").to_pylist(), t.column("image_path").to_pylist(), strict=False))


def resolve_images(table: pa.Table, images: Mapping[str, str]) -> list[str | None]:
    """Each row's local image as stored (its own image_path, else its fetched image_url), or None."""
    urls = table.column("image_url").to_pylist() if "image_url" in table.column_names else [None] * len(table)
    own = table.column("image_path").to_pylist() if "image_path" in table.column_names else [None] * len(table)
    return [p if p else images.get(u) if u else None for p, u in zip(own, urls, strict=False)]
