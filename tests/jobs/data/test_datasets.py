"""load_dataset over both layouts: what it finds, what it leaves out, and what it refuses."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.data.catalog_manifest import read_catalog, write_catalog
from jobs.data.datasets import DatasetError, Pair, Product, load_dataset
from jobs.data.sample import generate
from jobs.data.stl_ingest import ingest_stl
from tests.jobs.data.files import image
from tests.jobs.data.stl_lines import sig


def make_sample(root: Path) -> None:
    """The raw sample layout: pairs.jsonl, categories.json, images/{scenes,products}/, catalog.parquet."""
    cats = {"p1": "Shoes", "p2": "Bags", "p3": "Shoes", "p4": "Bags"}   # p4: in no scene
    pairs = [("s1", "p1", [0.1, 0.1, 0.4, 0.5]), ("s1", "p2", [0.5, 0.5, 0.9, 0.9]),
             ("s2", "p3", [0.2, 0.2, 0.6, 0.6]), ("s3", "p2", [0.2, 0.2, 0.6, 0.6])]
    lines = [json.dumps({"product": p, "scene": s, "bbox": b}) for s, p, b in pairs]
    lines.insert(2, "{broken")
    (root / "pairs.jsonl").parent.mkdir(parents=True, exist_ok=True)
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (root / "categories.json").write_text(json.dumps(cats))
    for s in ("s1", "s2"):                                  # s3 has no image
        image(root / "images" / "scenes" / f"{s}.jpg")
    for p in cats:
        image(root / "images" / "products" / f"{p}.jpg")
    pq.write_table(pa.table({"product_id": list(cats), "image_path": [f"images/products/{p}.jpg" for p in cats],
                             "category": list(cats.values())}), root / "catalog.parquet")


def test_sample_layout(tmp_path):
    root = tmp_path / "sample"
    make_sample(root)
    ds = load_dataset(root)
    assert ds.layout == "sample"
    assert ds.pairs == [Pair("s1", "p1", (0.1, 0.1, 0.4, 0.5)), Pair("s1", "p2", (0.5, 0.5, 0.9, 0.9)),
                        Pair("s2", "p3", (0.2, 0.2, 0.6, 0.6))]
    assert ds.scenes == {"s1": root / "images/scenes/s1.jpg", "s2": root / "images/scenes/s2.jpg"}
    assert ds.products["p4"] == Product(root / "images/products/p4.jpg", "Bags")
    image_path, category = ds.products["p1"]
    assert category == "Shoes" and image_path.is_file()
    assert ds.categories() == ["Bags", "Shoes"]
    assert ds.skipped == {"pair lines malformed": 1, "pairs without image": 1, "scenes without image": 1}


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset dir: expected pairs.parquet .* or pairs.jsonl"):
        load_dataset(tmp_path)
    (tmp_path / "pairs.parquet").write_bytes(b"")
    with pytest.raises(DatasetError, match="scenes.parquet is missing; rerun `ctl data stl`"):
        load_dataset(tmp_path)


def test_stl_layout_through_the_image_map(tmp_path):
    products = {sig(i): ("Shoes" if i % 2 else "Bags") for i in range(4)}
    scenes = [sig(("s", i)) for i in range(2)]
    lines = [json.dumps({"scene": scenes[i % 2], "product": p, "bbox": [0.1, 0.1, 0.5, 0.5]})
             for i, p in enumerate(products)]
    (tmp_path / "pairs.json").write_text("\n".join(lines))
    (tmp_path / "cat.json").write_text(json.dumps(products))
    out = tmp_path / "stl"
    ingest_stl(tmp_path / "pairs.json", tmp_path / "cat.json", out)
    with pytest.raises(DatasetError, match=f"run `ctl data fetch {out}` first"):
        load_dataset(out)

    # what `ctl data fetch` leaves: an url -> path map, relative to DIR inside it, absolute outside
    outside = image(tmp_path / "elsewhere" / "x.jpg")
    urls = pq.read_table(out / "products.parquet").column("image_url").to_pylist()[:3]
    urls += pq.read_table(out / "scenes.parquet").column("image_url").to_pylist()
    paths = [str(outside)] + [f"cache/objects/{i}.jpg" for i in range(1, len(urls))]
    for p in paths[1:]:
        image(out / p)
    pq.write_table(pa.table({"url": urls, "image_path": paths}), out / "images.parquet")
    assert write_catalog(out) == (3, 1)

    ds = load_dataset(out)
    assert ds.layout == "stl" and set(ds.scenes.values()) == {out / paths[3], out / paths[4]}
    assert len(ds.products) == 3 and len(ds.pairs) == 3
    assert ds.products[sorted(products)[0]].image_path == outside
    assert ds.skipped == {"products without local image": 1, "pairs without local image": 1}

    # re-ingesting keeps what was fetched: the catalogue is rebuilt from the image map
    ingest_stl(tmp_path / "pairs.json", tmp_path / "cat.json", out)
    assert len(read_catalog(out, check_files=True)) == 3

    # a cache file deleted behind our back is noticed, not handed to training
    (out / paths[1]).unlink()
    assert len(load_dataset(out).products) == 2


def test_the_generated_sample_loads(tmp_path):
    """Contract with `ctl sample-data`: its output is read by load_dataset and read_catalog."""
    generate(tmp_path, seed=0, scenes=3, products=20, categories=3, image_size=32, workers=1,
                         progress=False)
    ds = load_dataset(tmp_path)
    assert ds.layout == "sample" and ds.skipped == {} and len(ds.pairs) >= 9 and len(ds.products) == 20
    catalog = read_catalog(tmp_path / "catalog.parquet", check_files=True)
    assert sorted(catalog.column("product_id").to_pylist()) == sorted(ds.products)
    assert {r["category"] for r in catalog.to_pylist()} == set(ds.categories())
