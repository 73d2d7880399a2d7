"""The catalogue manifest contract: write_catalog keeps the local products, read_catalog checks and resolves."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import ArtifactError
from jobs.data.catalog_manifest import CATALOG_SCHEMA, ManifestError, read_catalog, write_catalog, write_catalog_table
from jobs.data.layouts import CATALOG, IMAGES, PRODUCTS
from tests.jobs.data.files import image


def write_manifest(path: Path, **cols) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


def test_read_catalog_resolves_against_the_manifest_folder(tmp_path, monkeypatch):
    image(tmp_path / "m" / "images" / "a.jpg")
    manifest = write_manifest(tmp_path / "m" / "catalog.parquet", brand=["Acme"], category=["Shoes"],
                              product_id=["a"], image_path=["images/a.jpg"])
    monkeypatch.chdir(tmp_path)
    table = read_catalog(os.path.relpath(manifest), check_files=True)
    assert table.column_names == ["product_id", "image_path", "category", "brand"]
    assert table.column("image_path").to_pylist() == [str((tmp_path / "m/images/a.jpg").resolve())]
    assert read_catalog(tmp_path / "m").equals(table)


@pytest.mark.parametrize("cols, message", [
    ({"product_id": ["a"], "category": ["x"]}, "missing column\\(s\\) image_path"),
    ({"product_id": ["a", "a"], "image_path": ["x.jpg", "y.jpg"], "category": ["x", "x"]},
     "duplicate product_id 'a' \\(rows 0 and 1\\)"),
    ({"product_id": ["a", None], "image_path": ["x.jpg", "y.jpg"], "category": ["x", "x"]},
     "1 row\\(s\\) have an empty product_id, first at row 1"),
    ({"product_id": ["a"], "image_path": [" "], "category": ["x"]}, "empty image_path"),
    ({"product_id": ["a"], "image_path": [1], "category": ["x"]}, "image_path must hold strings"),
    ({"product_id": ["a"], "image_path": ["nope.jpg"], "category": ["x"]}, "1 image file\\(s\\) do not exist"),
])
def test_read_catalog_problems(tmp_path, cols, message):
    manifest = write_manifest(tmp_path / "catalog.parquet", **cols)
    with pytest.raises(ManifestError, match=message):
        read_catalog(manifest, check_files=True)


def test_read_catalog_integer_ids_and_bad_files(tmp_path):
    m = write_manifest(tmp_path / "a" / "catalog.parquet", product_id=[5], image_path=["/x.jpg"], category=["c"])
    assert read_catalog(m).column("product_id").to_pylist() == ["5"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "catalog.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="not a readable parquet file"):
        read_catalog(tmp_path / "b")
    with pytest.raises(ManifestError, match="does not exist"):
        read_catalog(tmp_path / "c" / "catalog.parquet")


def test_write_catalog_keeps_products_with_a_local_image(tmp_path):
    image(tmp_path / "own.jpg")
    pq.write_table(pa.table({"product_id": ["a", "b", "c"], "category": ["x", "y", "x"],
                             "image_url": [None, "http://h/b.jpg", "http://h/c.jpg"],
                             "image_path": ["own.jpg", None, None], "brand": ["A", "B", "C"]}), tmp_path / PRODUCTS)
    pq.write_table(pa.table({"url": ["http://h/b.jpg"], "image_path": ["cache/b.jpg"]}), tmp_path / IMAGES)
    assert write_catalog(tmp_path) == (2, 1)
    catalog = pq.read_table(tmp_path / CATALOG)
    assert catalog.column_names == ["product_id", "image_path", "category", "image_url", "brand"]
    assert catalog.column("image_path").to_pylist() == ["own.jpg", "cache/b.jpg"]
    assert catalog.column("brand").to_pylist() == ["A", "B"]


def test_an_empty_url_catalogue_points_at_the_fetcher(tmp_path):
    pq.write_table(pa.table({"product_id": ["a"], "category": ["x"], "image_url": ["http://h/a.jpg"],
                             "image_path": pa.nulls(1, pa.string())}), tmp_path / PRODUCTS)
    write_catalog(tmp_path)
    with pytest.raises(ManifestError, match=f"no product with a local image; run `ctl data fetch {tmp_path}`") as e:
        read_catalog(tmp_path)
    assert isinstance(e.value, ArtifactError) and isinstance(e.value, ValueError)


def test_the_catalogue_writer_puts_the_required_string_columns_first_and_refuses_a_table_without_them(tmp_path):
    path = tmp_path / CATALOG
    write_catalog_table(path, pa.table({"price": [3.5], "category": ["shoes"], "product_id": pa.array([7]),
                                        "image_path": ["/img/7.jpg"]}))
    written = pq.read_schema(path)
    assert written.names == ["product_id", "image_path", "category", "price"]
    assert [written.field(f.name).type for f in CATALOG_SCHEMA] == [pa.string()] * 3
    assert read_catalog(path).column("product_id").to_pylist() == ["7"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ManifestError, match="needs the column.s. image_path"):
        write_catalog_table(tmp_path / "bad.parquet", pa.table({"product_id": ["a"], "category": ["c"]}))
    assert not (tmp_path / "bad.parquet").exists()
