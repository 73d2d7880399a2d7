"""The layouts module names every file of both layouts, and the writers use exactly those names."""
from __future__ import annotations

import json
from pathlib import Path

from jobs.data import layouts
from jobs.data.sample import generate
from jobs.data.stl_ingest import ingest_stl
from tests.jobs.data.stl_lines import CATS, LINES


def test_sample_image_paths_are_relative_to_the_sample_dir():
    assert layouts.sample_scene_image("abc") == Path("images/scenes/abc.jpg")
    assert layouts.sample_product_image("def") == Path("images/products/def.jpg")


def test_the_sample_writer_writes_the_named_files(tmp_path):
    generate(tmp_path, seed=0, scenes=3, products=12, categories=3, image_size=32, workers=1, progress=False)
    top = {p.name for p in tmp_path.iterdir()}
    assert top == {layouts.SAMPLE_PAIRS, layouts.SAMPLE_CATEGORIES, layouts.CATALOG, layouts.DONE_FILE, "images"}
    images = {p.relative_to(tmp_path).parent for p in tmp_path.rglob("*.jpg")}
    assert images == {layouts.SCENE_DIR, layouts.PRODUCT_DIR}


def test_stl_ingestion_writes_the_named_files(tmp_path):
    (tmp_path / "pairs.json").write_text("\n".join(LINES) + "\n")
    (tmp_path / "cat.json").write_text(json.dumps(CATS))
    ingest_stl(tmp_path / "pairs.json", tmp_path / "cat.json", tmp_path / "out")
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {layouts.SCENES, layouts.PRODUCTS, layouts.PAIRS, layouts.CATALOG, layouts.SUMMARY,
                       layouts.REJECTS}
