"""User catalogues: folder trees and CSV/parquet tables -> catalogue manifests, with clear messages."""
from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from common.errors import InputError
from jobs.cli import main
from jobs.data.catalog_manifest import read_catalog
from jobs.data.user_catalog import CatalogError, build_catalog, catalog_command
from tests.jobs.data.cli_output import one_line_error
from tests.jobs.data.files import image


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "shop"
    for rel in ["shoes/a.jpg", "shoes/nike/b.JPEG", "bags/c.png", "bags/d.webp"]:
        image(root / rel)
    (root / "bags" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    image(root / ".hidden" / "x.jpg")
    return root


def test_folder_tree(tree, tmp_path):
    result = build_catalog(tree, tmp_path / "out")
    assert result.per_category == {"bags": 2, "shoes": 2} and result.local == 4 and result.remote == 0
    assert any("notes.txt" in n for n in result.notes)
    catalog = read_catalog(tmp_path / "out" / "catalog.parquet", check_files=True)
    rows = {r["product_id"]: r for r in catalog.to_pylist()}
    assert set(rows) == {"shoes/a", "shoes/nike/b", "bags/c", "bags/d"}
    assert rows["shoes/nike/b"]["category"] == "shoes"
    assert rows["bags/c"]["image_path"] == str((tree / "bags/c.png").resolve())


def test_folder_tree_problems(tmp_path):
    image(tmp_path / "flat" / "a.jpg")
    with pytest.raises(CatalogError, match="not in a category sub-folder.*a.jpg"):
        build_catalog(tmp_path / "flat", tmp_path / "out")
    image(tmp_path / "dup" / "shoes" / "a.jpg")
    image(tmp_path / "dup" / "shoes" / "a.png")
    with pytest.raises(CatalogError, match="1 duplicate product_id\\(s\\): 'shoes/a'"):
        build_catalog(tmp_path / "dup", tmp_path / "out")
    (tmp_path / "empty" / "shoes").mkdir(parents=True)
    with pytest.raises(CatalogError, match="no images found"):
        build_catalog(tmp_path / "empty", tmp_path / "out")


def test_csv_with_paths_urls_and_metadata(tmp_path):
    src = tmp_path / "src"
    image(src / "img" / "1.jpg")
    image(tmp_path / "elsewhere.jpg")
    (src / "cat.csv").write_text(
        "product_id,image_path,image_url,category,brand,price\n"
        "00123,img/1.jpg,,shoes,Acme,19.5\n"
        f"00124,{tmp_path / 'elsewhere.jpg'},,bags,Bolt,\n"
        "00125,,https://example.invalid/x.jpg,bags,Acme,7\n")
    out = tmp_path / "out"
    result = build_catalog(src / "cat.csv", out)
    assert result.local == 2 and result.remote == 1 and result.metadata_columns == ["brand", "price"]
    assert any("metadata: brand, price" in n for n in result.notes)
    products = pq.read_table(out / "products.parquet")
    assert products.column("product_id").to_pylist() == ["00123", "00124", "00125"]   # ids stay text
    assert products.column("price").type == pa.float64()
    catalog = read_catalog(out, check_files=True)
    assert catalog.column_names == ["product_id", "image_path", "category", "image_url", "brand", "price"]
    assert catalog.column("brand").to_pylist() == ["Acme", "Bolt"]
    assert catalog.column("image_path").to_pylist()[0] == str((src / "img" / "1.jpg").resolve())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_to_fetch"] == 1 and summary["categories"] == {"bags": 2, "shoes": 1}


def test_parquet_source_with_integer_ids(tmp_path):
    image(tmp_path / "a.jpg")
    pq.write_table(pa.table({"product_id": [7], "image_path": ["a.jpg"], "category": ["hats"],
                             "tags": [["x", "y"]]}), tmp_path / "cat.parquet")
    build_catalog(tmp_path / "cat.parquet", tmp_path / "out")
    row = read_catalog(tmp_path / "out").to_pylist()[0]
    assert row["product_id"] == "7" and row["tags"] == ["x", "y"]


@pytest.mark.parametrize("csv, message", [
    ("productid,image_path,category\n1,a.jpg,x\n",
     "missing column\\(s\\) product_id.*rename 'productid' to 'product_id'"),
    ("product_id,category\n1,x\n", "missing column\\(s\\) image_path or image_url"),
    ("product_id,image_path,category\n1,a.jpg,x\n2,a.jpg,x\n1,a.jpg,y\n",
     "1 duplicate product_id\\(s\\): '1' at line 2 and line 4"),
    ("product_id,image_path,category\n1,a.jpg,\n", "empty category at line 2"),
    ("product_id,image_path,category\n1,,x\n", "neither image_path nor image_url at line 2"),
    ("product_id,image_url,category\n1,ftp://x/a.jpg,x\n", "image_url must start with http"),
    ("product_id,image_path,category\n1,a.jpg,x\n2,gone.jpg,x\n",
     "1 image file\\(s\\) do not exist: line 3: .*gone.jpg"),
])
def test_csv_problems_are_clear(tmp_path, csv, message):
    image(tmp_path / "a.jpg")
    (tmp_path / "cat.csv").write_text(csv)
    res = CliRunner().invoke(main, ["data", "catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    prefix = "^ctl data catalog: error: " + re.escape(str(tmp_path / "cat.csv")) + ": "
    assert re.search(prefix + message, one_line_error(res))
    assert not (tmp_path / "out" / "catalog.parquet").exists()


def test_skip_missing_and_cli_summary(tmp_path):
    image(tmp_path / "a.jpg")
    (tmp_path / "cat.csv").write_text("product_id,image_path,category\n1,a.jpg,x\n2,gone.jpg,x\n")
    res = CliRunner().invoke(catalog_command, [str(tmp_path / "cat.csv"), "--out", str(tmp_path / "out"),
                                    "--skip-missing"])
    assert res.exit_code == 0, res.output
    assert "left out 1 product(s)" in res.output and "1 products in 1 categories" in res.output
    assert read_catalog(tmp_path / "out").column("product_id").to_pylist() == ["1"]


def test_tiff_and_every_other_decodable_suffix_is_a_product(tmp_path):
    """`ctl data catalog FOLDER` takes the images every later stage decodes, TIFF included, in any case."""
    root = tmp_path / "shop"
    for rel in ["hats/a.tif", "hats/b.TIFF", "hats/c.jfif", "hats/d.jpe", "bags/e.bmp", "bags/f.gif"]:
        image(root / rel)
    (root / "bags" / "scan.pdf").write_bytes(b"%PDF-1.4")
    res = CliRunner().invoke(main, ["data", "catalog", str(root), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "ignored 1 non-image file(s): bags/scan.pdf" in res.stderr
    catalog = read_catalog(tmp_path / "out", check_files=True)
    assert sorted(catalog.column("product_id").to_pylist()) == ["bags/e", "bags/f", "hats/a", "hats/b", "hats/c",
                                                                "hats/d"]


def test_catalog_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        build_catalog(tmp_path / "absent", tmp_path / "out")
    assert issubclass(CatalogError, InputError) and CatalogError("x").exit_code == 2
