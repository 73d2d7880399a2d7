"""Scenes and catalogue shots: boxes tight around the items, and product shots re-rendered, never cropped."""
import colorsys
import io

import numpy as np
from PIL import Image

from jobs.data.layouts import PRODUCT_DIR, SCENE_DIR
from jobs.data.sample import generate
from jobs.data.sample.plans import ScenePlan, plan_scene
from jobs.data.sample.render import render_scene
from tests.jobs.data.sample.small_sample import SMALL, read_pairs


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def test_boxes_are_tight_around_the_items(small):
    """Re-render each scene with its item masks: the render is the saved JPEG, and each box bounds its mask."""
    by_scene = {}
    for pair in read_pairs(small):
        by_scene.setdefault(pair["scene"], []).append(pair)
    size = SMALL["image_size"]
    for index in range(SMALL["scenes"]):
        plan = plan_scene(SMALL["seed"], index, SMALL["categories"])
        img, _, masks = render_scene(plan, seed=SMALL["seed"], size=size, return_masks=True)
        encoded = io.BytesIO()
        Image.fromarray(img).save(encoded, format="JPEG", quality=90)
        assert encoded.getvalue() == (small / SCENE_DIR / f"{plan.scene_id}.jpg").read_bytes()
        pairs = by_scene[plan.scene_id]
        assert [p["product"] for p in pairs] == [it.product_id for it in plan.items]
        bare, _, _ = render_scene(ScenePlan(**{**plan.__dict__, "items": ()}), seed=SMALL["seed"], size=size)
        diff = np.abs(img.astype(np.float32) - bare.astype(np.float32)).sum(axis=2)
        outside = diff[~np.any(np.stack(masks) > 0, axis=0)].mean()   # shadows only
        for pair, mask in zip(pairs, masks, strict=True):
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
    generate(out, seed=5, scenes=6, products=40, image_size=128, workers=1, progress=False)
    diffs, controls = [], []
    for pair in read_pairs(out):
        scene = _pixels(out / SCENE_DIR / f"{pair['scene']}.jpg")
        product = _pixels(out / PRODUCT_DIR / f"{pair['product']}.jpg")
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
        for placed in plan_scene(SMALL["seed"], index, SMALL["categories"]).items:
            zone_of[placed.product_id] = (index, placed.zone)
    vecs = {pid: _mean_hue_vector(_pixels(small / PRODUCT_DIR / f"{pid}.jpg")) for pid in zone_of}
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
