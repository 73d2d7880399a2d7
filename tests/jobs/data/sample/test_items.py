"""Item rendering: sizes, value ranges, patterns that show, and the RGBA image placed in scenes and shots."""
import dataclasses

import numpy as np
import pytest

from jobs.data.sample.items import item_image, render_item
from jobs.data.sample.styles import PATTERNS, make_item, sample_look


@pytest.fixture
def item():
    rng = np.random.default_rng(4)
    return make_item(rng, sample_look(rng), 0, 3)


def test_render_item_sizes_and_ranges(item):
    rgb, alpha = render_item(item, 50, 30, np.random.default_rng(0))
    assert rgb.shape == (30, 50, 3) and alpha.shape == (30, 50)
    assert rgb.dtype == alpha.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1 and alpha.min() >= 0 and alpha.max() <= 1
    assert 0.2 < (alpha > 0.5).mean() < 0.95
    tiny_rgb, tiny_alpha = render_item(item, 1, 2, np.random.default_rng(0))
    assert tiny_rgb.shape == (4, 4, 3) and tiny_alpha.shape == (4, 4)   # never under 4 px a side


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if p != "solid"])
def test_every_pattern_shows_on_the_item(item, pattern):
    def render(name):
        return render_item(dataclasses.replace(item, pattern=name, texture="smooth"), 64, 64, np.random.default_rng(0))

    (solid, alpha), (patterned, _) = render("solid"), render(pattern)
    assert np.abs(patterned - solid)[alpha > 0.99].mean() > 0.02   # 0.04 to 0.13 measured for this item


def test_unknown_pattern_is_refused(item):
    with pytest.raises(ValueError, match="unknown pattern 'tartan'"):
        render_item(dataclasses.replace(item, pattern="tartan"), 16, 16, np.random.default_rng(0))


def test_item_image_flips_and_rotates_with_an_expanded_canvas(item):
    plain = item_image(item, 40, 20, np.random.default_rng(1), 0.0)
    flipped = item_image(item, 40, 20, np.random.default_rng(1), 0.0, flip=True)
    turned = item_image(item, 40, 20, np.random.default_rng(1), 30.0)
    assert plain.mode == "RGBA" and plain.size == flipped.size == (40, 20)
    assert np.array_equal(np.asarray(flipped), np.asarray(plain)[:, ::-1])
    assert turned.width > 40 and turned.height > 20
