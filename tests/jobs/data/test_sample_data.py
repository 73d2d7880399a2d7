"""Tests for the sample looks generator: determinism, formats, box accuracy, no copied pixels, resume, CLI."""
import colorsys
import io
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.cli import main
from jobs.data import sample_data as sd

SMALL = dict(seed=3, scenes=12, products=60, categories=8, image_size=64)
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def _pairs(root):
    return [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    sd.generate(out, workers=1, progress=False, **SMALL)
    return out


def test_same_seed_gives_same_bytes_whatever_the_worker_count(small, tmp_path):
    other = tmp_path / "again"
    sd.generate(other, workers=2, progress=False, **SMALL)
    names = [p.relative_to(small) for p in _files(small) if p.name != sd.DONE_FILE]
    assert names == [p.relative_to(other) for p in _files(other) if p.name != sd.DONE_FILE]
    for name in names:
        if name.suffix == ".parquet":
            assert pq.read_table(small / name).equals(pq.read_table(other / name)), name
        else:
            assert (small / name).read_bytes() == (other / name).read_bytes(), name


def test_another_seed_gives_other_data(small, tmp_path):
    other = tmp_path / "seed4"
    sd.generate(other, workers=1, progress=False, **{**SMALL, "seed": 4})
    assert {p["scene"] for p in _pairs(small)}.isdisjoint({p["scene"] for p in _pairs(other)})
    a = sorted(_pixels(p).mean() for p in (small / sd.SCENE_DIR).glob("*.jpg"))
    b = sorted(_pixels(p).mean() for p in (other / sd.SCENE_DIR).glob("*.jpg"))
    assert a != b


def test_formats(small):
    pairs = _pairs(small)
    categories = json.loads((small / "categories.json").read_text())
    table = pq.read_table(small / "catalog.parquet")
    assert table.schema.names == ["product_id", "image_path", "category"]
    assert all(str(t) == "string" for t in table.schema.types)
    catalog = table.to_pylist()
    ids = [row["product_id"] for row in catalog]
    assert len(ids) == len(set(ids)) == SMALL["products"]
    assert set(categories) == set(ids)
    allowed = {path for _, path in sd.CATEGORIES[:SMALL["categories"]]}
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
        with Image.open(small / sd.SCENE_DIR / f"{pair['scene']}.jpg") as im:
            assert im.format == "JPEG" and im.size == (64, 64)
            im.load()
    assert len(per_scene) == SMALL["scenes"]
    assert all(3 <= len(c) <= 5 and len(set(c)) == len(c) for c in per_scene.values())
    in_scenes = {p["product"] for p in pairs}
    assert len(in_scenes) == len(pairs)                       # one scene per product
    assert 0 < SMALL["products"] - len(in_scenes)             # the catalogue holds products in no scene
    assert len(_files(small / sd.SCENE_DIR)) == SMALL["scenes"]
    assert len(_files(small / sd.PRODUCT_DIR)) == SMALL["products"]


def test_boxes_are_tight_around_the_items(small):
    """Re-render each scene with its item masks: the render is the saved JPEG, and each box bounds its mask."""
    by_scene = {}
    for pair in _pairs(small):
        by_scene.setdefault(pair["scene"], []).append(pair)
    size = SMALL["image_size"]
    for index in range(SMALL["scenes"]):
        plan = sd.plan_scene(SMALL["seed"], index, SMALL["categories"])
        img, _, masks = sd.render_scene(plan, seed=SMALL["seed"], size=size, return_masks=True)
        encoded = io.BytesIO()
        Image.fromarray(img).save(encoded, format="JPEG", quality=90)
        assert encoded.getvalue() == (small / sd.SCENE_DIR / f"{plan.scene_id}.jpg").read_bytes()
        pairs = by_scene[plan.scene_id]
        assert [p["product"] for p in pairs] == [it.product_id for it in plan.items]
        bare, _, _ = sd.render_scene(sd.ScenePlan(**{**plan.__dict__, "items": ()}), seed=SMALL["seed"], size=size)
        diff = np.abs(img.astype(np.float32) - bare.astype(np.float32)).sum(axis=2)
        outside = diff[~np.any(np.stack(masks) > 0, axis=0)].mean()   # shadows only
        for pair, mask in zip(pairs, masks):
            left, top, right, bottom = (round(v * size) for v in pair["bbox"])
            on = mask > 127
            assert on[top:bottom, left:right].sum() >= 0.98 * on.sum()   # the item is inside its box
            box = on[top:bottom, left:right]
            assert box.mean() > 0.15                         # ...and fills a fair part of it (arcs, pairs)
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()  # tight
            # the box shows the item: there the scene differs from the same scene rendered without items
            assert diff[top:bottom, left:right][box].mean() > 5 * max(outside, 1)


def _foreground_crop(img):
    """The product shot's object: pixels far from the light background, cropped to their box."""
    bg = np.median(np.concatenate([img[:3].reshape(-1, 3), img[-3:].reshape(-1, 3)]), axis=0)
    on = np.abs(img - bg).sum(axis=2) > 40
    ys, xs = np.nonzero(on.any(axis=1))[0], np.nonzero(on.any(axis=0))[0]
    return img[ys.min():ys.max() + 1, xs.min():xs.max() + 1], bg


def test_product_shots_are_rerendered_not_cropped(tmp_path):
    out = tmp_path / "s"
    sd.generate(out, seed=5, scenes=6, products=40, image_size=128, workers=1, progress=False)
    diffs, controls = [], []
    for pair in _pairs(out):
        scene = _pixels(out / sd.SCENE_DIR / f"{pair['scene']}.jpg")
        product = _pixels(out / sd.PRODUCT_DIR / f"{pair['product']}.jpg")
        left, top, right, bottom = (round(v * 128) for v in pair["bbox"])
        crop = scene[top:bottom, left:right]
        obj, bg = _foreground_crop(product)
        assert bg.min() > 190                                    # a light catalogue background
        size = (crop.shape[1], crop.shape[0])
        resized = np.asarray(Image.fromarray(obj.astype(np.uint8)).resize(size, Image.BILINEAR), np.float32)
        diffs.append(np.abs(resized - crop).mean())
        # control: a rescaled copy of the crop itself would be caught by this measure
        twice = Image.fromarray(crop.astype(np.uint8)).resize((crop.shape[1] * 2, crop.shape[0] * 2), Image.BILINEAR)
        controls.append(np.abs(np.asarray(twice.resize(size, Image.BILINEAR), np.float32) - crop).mean())
    assert max(controls) < 10
    assert min(diffs) > 20, sorted(diffs)[:5]


def _mean_hue_vector(img):
    """Mean colour of the non-background pixels of a product shot, as (cos hue, sin hue) * saturation, value."""
    obj, bg = _foreground_crop(img)
    on = np.abs(obj - bg).sum(axis=2) > 40
    r, g, b = (obj[..., i][on].mean() / 255 for i in range(3))
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    return np.array([s * np.cos(2 * np.pi * h), s * np.sin(2 * np.pi * h), v])


def test_items_of_a_zone_look_alike_in_the_product_shots(small):
    zone_of = {}
    for index in range(SMALL["scenes"]):
        for placed in sd.plan_scene(SMALL["seed"], index, SMALL["categories"]).items:
            zone_of[placed.product_id] = (index, placed.zone)
    vecs = {pid: _mean_hue_vector(_pixels(small / sd.PRODUCT_DIR / f"{pid}.jpg")) for pid in zone_of}
    same_zone, other_scene = [], []
    ids = list(vecs)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            d = np.linalg.norm(vecs[a] - vecs[b])
            if zone_of[a] == zone_of[b]:
                same_zone.append(d)
            elif zone_of[a][0] != zone_of[b][0]:
                other_scene.append(d)
    assert np.mean(same_zone) < 0.6 * np.mean(other_scene)


def test_style_statistics_of_the_plans():
    """Looks bind their items, zones bind them more, and distractors follow the in-scene distribution."""
    def dist(a, b):
        return np.abs(np.subtract(a.colors[0], b.colors[0])).sum()

    plans = [sd.plan_scene(0, index, 8) for index in range(200)]
    same_zone, cross_zone = [], []
    for plan in plans:
        for i, a in enumerate(plan.items):
            for b in plan.items[i + 1:]:
                (same_zone if a.zone == b.zone else cross_zone).append(dist(a.item, b.item))
                if a.zone == b.zone:
                    assert a.item.pattern == b.item.pattern
    items = [placed.item for plan in plans for placed in plan.items]
    distractors = [sd.plan_distractor(0, j, 8).item for j in range(len(items))]
    rng = np.random.default_rng(0)
    i, j = rng.integers(len(items), size=(2, 1000))
    random_pairs = np.mean([dist(items[a], items[b]) for a, b in zip(i, j)])
    vs_distractors = np.mean([dist(items[a], distractors[b]) for a, b in zip(i, j)])
    assert np.mean(same_zone) < 0.6 * np.mean(cross_zone) < 0.6 * random_pairs
    assert abs(vs_distractors - random_pairs) < 0.1 * random_pairs
    assert {d.pattern for d in distractors} == {it.pattern for it in items} == set(sd.PATTERNS)
    assert np.std([d.colors[0] for d in distractors]) == pytest.approx(np.std([it.colors[0] for it in items]), rel=0.1)


def test_rerun_is_a_noop_and_other_params_regenerate(tmp_path):
    out = tmp_path / "s"
    params = dict(seed=1, scenes=4, products=30, image_size=48, workers=1, progress=False)
    first = sd.generate(out, **params)
    assert not first["skipped"]
    stamps = {p: p.stat().st_mtime_ns for p in _files(out)}
    again = sd.generate(out, **params)
    assert again["skipped"]
    assert {p: p.stat().st_mtime_ns for p in _files(out)} == stamps

    changed = sd.generate(out, **{**params, "products": 24, "scenes": 3})
    assert not changed["skipped"]
    marker = json.loads((out / sd.DONE_FILE).read_text())
    assert marker["params"]["products"] == 24 and marker["params"]["scenes"] == 3
    assert len(_files(out / sd.PRODUCT_DIR)) == 24           # images of the earlier run are gone
    assert len(_files(out / sd.SCENE_DIR)) == 3
    assert pq.read_table(out / "catalog.parquet").num_rows == 24


def test_a_crash_leaves_no_complete_looking_dataset(tmp_path, monkeypatch):
    out = tmp_path / "s"
    params = dict(seed=2, scenes=3, products=20, image_size=48, workers=1, progress=False)
    sd.generate(out, **params)
    calls = []

    def boom(plan, *, seed, size):
        calls.append(plan)
        if len(calls) > 5:
            raise RuntimeError("disk full")
        return real(plan, seed=seed, size=size)

    real = sd.render_product
    monkeypatch.setattr(sd, "render_product", boom)
    with pytest.raises(RuntimeError):
        sd.generate(out, **{**params, "seed": 9})              # other params: regenerates, then crashes
    for name in (sd.DONE_FILE, "catalog.parquet", "pairs.jsonl", "categories.json"):
        assert not (out / name).exists(), name
    assert not [p for p in _files(out) if p.name.endswith(".tmp")]
    monkeypatch.setattr(sd, "render_product", real)
    assert not sd.generate(out, **{**params, "seed": 9})["skipped"]
    assert (out / sd.DONE_FILE).exists()


def test_too_small_a_catalogue_is_refused(tmp_path):
    with pytest.raises(ValueError, match="products"):
        sd.generate(tmp_path / "s", scenes=10, products=12, image_size=32, workers=1, progress=False)


def test_cli_sample_data(tmp_path):
    out, sheet = tmp_path / "sample", tmp_path / "sheet.png"
    args = ["sample-data", "--out", str(out), "--scenes", "3", "--products", "20", "--image-size", "48",
            "--workers", "1", "--seed", "7", "--sheet", str(sheet), "--sheet-scenes", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote 3 scenes, 20 products" in result.output
    assert pq.read_table(out / "catalog.parquet").num_rows == 20
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width > 256
    result = CliRunner().invoke(main, args[:-4])
    assert result.exit_code == 0 and "up to date" in result.output
    bad = CliRunner().invoke(main, ["sample-data", "--out", str(tmp_path / "x"), "--scenes", "9", "--products", "5"])
    assert bad.exit_code == 2 and "products" in bad.output
