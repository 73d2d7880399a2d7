"""DIR/images.parquet: written and read by one module; a row's image is its own path, else its fetched URL's."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.data.image_cache import CacheEntry
from jobs.data.image_map import read_image_map, resolve_images, stored_path, write_image_map
from jobs.data.layouts import IMAGES


def test_write_and_read_back(tmp_path):
    inside = CacheEntry("http://h/a.jpg", (tmp_path / "cache/objects/aa/a.jpg").resolve(), "aa" * 32, 10, 4, 3)
    outside = CacheEntry("http://h/b.jpg", Path("/elsewhere/b.png"), "bb" * 32, 20, 5, 6)
    write_image_map(tmp_path, [inside, outside])
    table = pq.read_table(tmp_path / IMAGES)
    assert table.column_names == ["url", "image_path", "sha256", "bytes", "width", "height"]
    assert table.schema.field("bytes").type == pa.int64()
    assert table.schema.field("width").type == pa.int32()
    expected = {"http://h/a.jpg": "cache/objects/aa/a.jpg", "http://h/b.jpg": "/elsewhere/b.png"}
    assert read_image_map(tmp_path) == expected
    assert read_image_map(tmp_path / "nothing") == {}


def test_stored_path_is_relative_inside_the_dir_only(tmp_path):
    assert stored_path(tmp_path.resolve() / "x" / "y.jpg", tmp_path) == "x/y.jpg"
    assert stored_path("/somewhere/else.jpg", tmp_path) == "/somewhere/else.jpg"


def test_resolve_images_prefers_a_rows_own_path():
    table = pa.table({"image_url": ["http://h/a.jpg", "http://h/b.jpg", None, "http://h/gone.jpg"],
                      "image_path": ["own/a.jpg", None, None, None]})
    images = {"http://h/a.jpg": "cache/a.jpg", "http://h/b.jpg": "cache/b.jpg"}
    assert resolve_images(table, images) == ["own/a.jpg", "cache/b.jpg", None, None]
    assert resolve_images(pa.table({"image_path": ["p.jpg"]}), images) == ["p.jpg"]
