"""The sample writer and `ctl sample-data`: same seed same bytes, formats, resume, crash safety, CLI errors."""
import json
import re

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from common.errors import InputError
from jobs.cli import main
from jobs.data.layouts import CATALOG, DONE_FILE, PRODUCT_DIR, SAMPLE_CATEGORIES, SAMPLE_PAIRS, SCENE_DIR
from jobs.data.sample import generate, generator
from jobs.data.sample.shapes import CATEGORIES
from tests.jobs.data.sample.small_sample import SMALL, read_pairs

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_same_bytes_whatever_the_worker_count(small, tmp_path):
    other = tmp_path / "again"
    generate(other, workers=2, progress=False, **SMALL)
    names = [p.relative_to(small) for p in _files(small)]
    assert names == [p.relative_to(other) for p in _files(other)]
    for name in names:
        if name.name == DONE_FILE:   # holds the run's duration
            first, second = (json.loads((root / name).read_text()) for root in (small, other))
            assert {**first, "seconds": 0} == {**second, "seconds": 0}
        else:
            assert (small / name).read_bytes() == (other / name).read_bytes(), name


def test_another_seed_gives_other_data(small, tmp_path):
    other = tmp_path / "seed4"
    generate(other, workers=1, progress=False, **{**SMALL, "seed": 4})
    assert {p["scene"] for p in read_pairs(small)}.isdisjoint({p["scene"] for p in read_pairs(other)})
    a = {p.read_bytes() for p in (small / SCENE_DIR).glob("*.jpg")}
    assert a.isdisjoint({p.read_bytes() for p in (other / SCENE_DIR).glob("*.jpg")})


def test_formats(small):
    pairs = read_pairs(small)
    categories = json.loads((small / SAMPLE_CATEGORIES).read_text())
    table = pq.read_table(small / CATALOG)
    assert table.schema.names == ["product_id", "image_path", "category"]
    assert all(str(t) == "string" for t in table.schema.types)
    catalog = table.to_pylist()
    ids = [row["product_id"] for row in catalog]
    assert len(ids) == len(set(ids)) == SMALL["products"]
    assert set(categories) == set(ids)
    allowed = {path for _, path in CATEGORIES[:SMALL["categories"]]}
    for row in catalog:
        assert HEX32.match(row["product_id"])
        assert row["image_path"] == f"images/products/{row['product_id']}.jpg"
        assert row["category"] == categories[row["product_id"]] in allowed
        with Image.open(small / row["image_path"]) as im:
            assert im.format == "JPEG" and im.size == (64, 64)

    per_scene = {}
    for pair in pairs:
        assert set(pair) == {"product", "scene", "bbox"}
        assert HEX32.match(pair["scene"]) and pair["product"] in categories
        left, top, right, bottom = pair["bbox"]
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        per_scene.setdefault(pair["scene"], []).append(categories[pair["product"]])
        with Image.open(small / SCENE_DIR / f"{pair['scene']}.jpg") as im:
            assert im.format == "JPEG" and im.size == (64, 64)
            im.load()
    assert len(per_scene) == SMALL["scenes"]
    assert all(3 <= len(c) <= 5 and len(set(c)) == len(c) for c in per_scene.values())
    in_scenes = {p["product"] for p in pairs}
    assert len(in_scenes) == len(pairs)                       # one scene per product
    assert SMALL["products"] - len(in_scenes) > 0             # the catalogue holds products in no scene
    assert len(_files(small / SCENE_DIR)) == SMALL["scenes"]
    assert len(_files(small / PRODUCT_DIR)) == SMALL["products"]


def test_rerun_is_a_noop_and_other_params_regenerate(tmp_path):
    out = tmp_path / "s"
    params = {"seed": 1, "scenes": 4, "products": 30, "image_size": 48, "workers": 1, "progress": False}
    first = generate(out, **params)
    assert not first["skipped"]
    stamps = {p: p.stat().st_mtime_ns for p in _files(out)}
    again = generate(out, **params)
    assert again["skipped"]
    assert {p: p.stat().st_mtime_ns for p in _files(out)} == stamps

    changed = generate(out, **{**params, "products": 24, "scenes": 3})
    assert not changed["skipped"]
    marker = json.loads((out / DONE_FILE).read_text())
    assert marker["params"]["products"] == 24 and marker["params"]["scenes"] == 3
    assert len(_files(out / PRODUCT_DIR)) == 24           # images of the earlier run are gone
    assert len(_files(out / SCENE_DIR)) == 3
    assert pq.read_table(out / CATALOG).num_rows == 24


def test_a_crash_leaves_no_complete_looking_dataset(tmp_path, monkeypatch):
    out = tmp_path / "s"
    params = {"seed": 2, "scenes": 3, "products": 20, "image_size": 48, "workers": 1, "progress": False}
    generate(out, **params)
    calls = []

    def boom(plan, *, seed, size):
        calls.append(plan)
        if len(calls) > 5:
            raise RuntimeError("disk full")
        return real(plan, seed=seed, size=size)

    real = generator.render_product
    monkeypatch.setattr(generator, "render_product", boom)
    with pytest.raises(RuntimeError):
        generate(out, **{**params, "seed": 9})              # other params: regenerates, then crashes
    for name in (DONE_FILE, CATALOG, SAMPLE_PAIRS, SAMPLE_CATEGORIES):
        assert not (out / name).exists(), name
    assert not [p for p in _files(out) if p.name.endswith(".tmp")]
    monkeypatch.setattr(generator, "render_product", real)
    assert not generate(out, **{**params, "seed": 9})["skipped"]
    assert (out / DONE_FILE).exists()


@pytest.mark.parametrize("params, message", [
    ({"scenes": 10, "products": 12}, "products \\(12\\) is smaller than the \\d+ products"),
    ({"categories": 2}, "categories must be in \\[3, 14\\]"),
    ({"image_size": 16}, "image_size must be >= 32"),
    ({"seed": -1}, "seed must be >= 0"),
])
def test_bad_parameters_are_input_errors(tmp_path, params, message):
    with pytest.raises(InputError, match=message):
        generate(tmp_path / "s", **{"scenes": 3, "products": 20, "image_size": 32, "workers": 1, "progress": False,
                                    **params})
    assert not (tmp_path / "s").exists()


def test_cli_sample_data(tmp_path):
    out, sheet = tmp_path / "sample", tmp_path / "sheet.png"
    args = ["sample-data", "--out", str(out), "--scenes", "3", "--products", "20", "--image-size", "48",
            "--workers", "1", "--seed", "7", "--sheet", str(sheet), "--sheet-scenes", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote 3 scenes, 20 products" in result.output
    assert pq.read_table(out / CATALOG).num_rows == 20
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width > 256
    result = CliRunner().invoke(main, args[:-4])
    assert result.exit_code == 0 and "up to date" in result.output


@pytest.mark.parametrize("args, message", [
    (["--scenes", "9", "--products", "5"], "ctl sample-data: error: products (5) is smaller than the"),
    (["--categories", "20"], "ctl: error: Invalid value for '--categories'"),
    (["--products", "30", "--distractors", "5"], "ctl: error: --products and --distractors both size the catalogue"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    bad = CliRunner().invoke(main, ["sample-data", "--out", str(tmp_path / "x"), "--workers", "1", *args])
    assert bad.exit_code == 2
    assert bad.stderr.startswith(message) and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "Traceback" not in bad.output


def test_distractors_grow_the_catalogue_around_the_same_looks(small, tmp_path):
    base = generate(tmp_path / "base", scenes=3, products=20, image_size=32, workers=1, progress=False)
    in_scenes = base["counts"]["products_in_scenes"]
    big = generate(tmp_path / "big", scenes=3, distractors=25, image_size=32, workers=1, progress=False)
    assert big["counts"]["products"] == in_scenes + 25 and big["params"]["products"] == in_scenes + 25
    assert (tmp_path / "big" / SAMPLE_PAIRS).read_bytes() == (tmp_path / "base" / SAMPLE_PAIRS).read_bytes()
    small_ids = set(pq.read_table(tmp_path / "base" / CATALOG).column("product_id").to_pylist())
    assert small_ids <= set(pq.read_table(tmp_path / "big" / CATALOG).column("product_id").to_pylist())
    with pytest.raises(InputError, match="distractors must be >= 0"):
        generate(tmp_path / "bad", scenes=3, distractors=-1, image_size=32, workers=1, progress=False)
