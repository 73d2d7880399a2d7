"""'outfit' looks: seeded, a whole-look cue in every item and in the scene, and 'zones' left as it was."""
import colorsys
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import main
from jobs.data.layouts import DONE_FILE, SAMPLE_CATEGORIES, SAMPLE_PAIRS
from jobs.data.sample import generate
from jobs.data.sample.plans import ProductPlan, plan_distractor, plan_scene
from jobs.data.sample.render import render_product, render_scene
from jobs.data.sample.styles import OCCASIONS
from tests.jobs.data.sample.small_sample import SMALL, read_pairs

# Recorded from the generator before the 'outfit' kind existed (commit 5fc1831, Pillow 13.0.0, numpy 2.4.6),
# on the small sample (seed 3, 12 scenes, 60 products, 64 px). Pixels depend on Pillow's drawing and
# numpy's generators: after an upgrade of either, re-record them from that commit, never from new code.
ZONES_MANIFESTS_SHA256 = "6d31f649cc5537f1ed3572fe02e891e43389e7a76045f486885c4e3dcac4393c"
ZONES_PIXELS_SHA256 = "e3f7f44e56b13590639d7834dc505a8a5bb3ae736120af5f4bf43dd7cfd39022"


def _pixels_sha256(looks: str) -> str:
    """Raw (pre-JPEG) pixels of 4 scenes, one scene product and one distractor each, as recorded above."""
    h = hashlib.sha256()
    for i in range(4):
        plan = plan_scene(3, i, 8, looks)
        h.update(render_scene(plan, seed=3, size=64)[0].tobytes())
        first = plan.items[0]
        h.update(render_product(ProductPlan(first.product_id, first.item, (0, i, 0), i), seed=3, size=64).tobytes())
        h.update(render_product(plan_distractor(3, i, 8, looks), seed=3, size=64).tobytes())
    return h.hexdigest()


def test_zones_reproduces_the_original_generator_bit_for_bit(small):
    assert SMALL["seed"] == 3 and SMALL["image_size"] == 64   # the settings the hashes were recorded with
    manifests = hashlib.sha256()
    for name in (SAMPLE_PAIRS, SAMPLE_CATEGORIES):
        manifests.update((small / name).read_bytes())
    assert manifests.hexdigest() == ZONES_MANIFESTS_SHA256
    assert _pixels_sha256("zones") == ZONES_PIXELS_SHA256
    assert "looks" not in json.loads((small / DONE_FILE).read_text())["params"]   # old markers stay valid
    assert _pixels_sha256("outfit") != ZONES_PIXELS_SHA256


def test_outfit_plans_are_seeded_and_keep_the_zones_layout_under_their_own_ids():
    a, b = plan_scene(5, 2, 8, "outfit"), plan_scene(5, 2, 8, "outfit")
    assert a == b and a.cue is not None and a.cue.occasion in OCCASIONS
    assert plan_scene(6, 2, 8, "outfit").cue != a.cue
    zones = plan_scene(5, 2, 8)
    assert zones.cue is None and a.scene_id != zones.scene_id
    assert {p.product_id for p in a.items}.isdisjoint(p.product_id for p in zones.items)
    # the cue has a stream of its own: layout, categories and boxes are the zones plan's
    assert (a.layout, a.split, a.frame) == (zones.layout, zones.split, zones.frame)
    def layout(plan):
        return [(p.item.category, p.zone, p.box) for p in plan.items]
    assert layout(a) == layout(zones)
    assert plan_distractor(5, 1, 8, "outfit") == plan_distractor(5, 1, 8, "outfit")
    assert plan_distractor(5, 1, 8, "outfit").product_id != plan_distractor(5, 1, 8).product_id
    with pytest.raises(ValueError, match="looks"):
        plan_scene(5, 2, 8, "party")


def test_outfit_sample_same_seed_same_bytes(tmp_path):
    params = {**SMALL, "scenes": 6, "products": 40, "looks": "outfit"}
    generate(tmp_path / "a", workers=1, progress=False, **params)
    generate(tmp_path / "b", workers=2, progress=False, **params)
    for name in (SAMPLE_PAIRS, SAMPLE_CATEGORIES):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for pair in read_pairs(tmp_path / "a"):
        for kind, key in (("scenes", "scene"), ("products", "product")):
            path = f"images/{kind}/{pair[key]}.jpg"
            assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    assert json.loads((tmp_path / "a" / DONE_FILE).read_text())["params"]["looks"] == "outfit"


def _within_and_across(plans, feature) -> tuple[float, float]:
    """Median L1 distance of a feature between items of one look, and between items of neighbouring looks."""
    within, across = [], []
    for k, plan in enumerate(plans):
        own = [feature(p.item) for p in plan.items]
        other = [feature(p.item) for p in plans[k - 1].items]
        within += [np.abs(own[a] - own[b]).sum() for a in range(len(own)) for b in range(a + 1, len(own))]
        across += [np.abs(a - b).sum() for a in own for b in other]
    return float(np.median(within)), float(np.median(across))


def _saturation_value(item) -> np.ndarray:
    return np.asarray(colorsys.rgb_to_hsv(*item.colors[0])[1:])


def _accent(item) -> np.ndarray:
    return np.asarray(item.colors[2])


def test_items_of_an_outfit_share_its_occasion_and_theme_more_than_other_looks_do():
    plans = [plan_scene(0, i, 8, "outfit") for i in range(200)]
    # the theme colour is every item's accent, jittered: measured 0.16 within a look against 0.87 across
    within, across = _within_and_across(plans, _accent)
    assert within < 0.35 * across
    # the occasion pulls every item's saturation and value: measured ratio 0.39, against 0.48 for 'zones'
    ratio = np.divide(*_within_and_across(plans, _saturation_value))
    zones_ratio = np.divide(*_within_and_across([plan_scene(0, i, 8) for i in range(200)], _saturation_value))
    assert ratio < 0.45 and ratio < zones_ratio - 0.05


def test_an_outfit_scene_shows_its_theme_around_the_items():
    """The picture's border (mostly background) is nearer its own look's theme colour than the previous look's."""
    own, other = [], []
    plans = [plan_scene(0, i, 8, "outfit") for i in range(40)]
    themes = [np.asarray(colorsys.hsv_to_rgb(*p.cue.theme)) for p in plans]
    for k, plan in enumerate(plans):
        img = render_scene(plan, seed=0, size=64)[0].astype(np.float64) / 255
        border = np.concatenate([img[:4], img[-4:], img[:, :4].transpose(1, 0, 2), img[:, -4:].transpose(1, 0, 2)])
        colour = border.reshape(-1, 3).mean(axis=0)
        own.append(np.abs(colour - themes[k]).sum())
        other.append(np.abs(colour - themes[k - 1]).sum())
    assert np.median(own) < 0.8 * np.median(other)   # measured 0.45 against 0.69 with a wash of 0.5


def test_cli_looks_option(tmp_path):
    out = tmp_path / "o"
    args = ["sample-data", "--out", str(out), "--workers", "1", "--scenes", "3", "--products", "20",
            "--image-size", "32", "--looks", "outfit"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / DONE_FILE).read_text())["params"]["looks"] == "outfit"
    again = CliRunner().invoke(main, args[:-1] + ["zones"])   # another kind regenerates, it is not 'up to date'
    assert again.exit_code == 0 and "wrote" in again.output
    bad = CliRunner().invoke(main, args[:-1] + ["party"])
    assert bad.exit_code == 2 and "party" in bad.output
