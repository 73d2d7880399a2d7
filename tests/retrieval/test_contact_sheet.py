"""The contact sheet: the attention overlay puts the heat where the attention is; the sheet is one PNG per answer."""
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
from PIL import Image

from retrieval.contact_sheet import CMAP, attention_overlay, render_sheet


def test_the_overlay_blends_the_colour_map_where_the_attention_is():
    scene = Image.new("RGB", (140, 70), (128, 128, 128))
    attention = np.zeros((7, 7))
    attention[3, 0] = 1.0                      # all the attention on one left-middle cell
    out = np.asarray(attention_overlay(scene, attention, alpha=0.5), dtype=float)
    assert out.shape == (70, 140, 3)
    hot = np.asarray(matplotlib.colormaps[CMAP](1.0)[:3]) * 255
    cold = np.asarray(matplotlib.colormaps[CMAP](0.0)[:3]) * 255
    np.testing.assert_allclose(out[35, 10], 0.5 * 128 + 0.5 * hot, atol=12)   # bicubic upsampling rounds the peak
    np.testing.assert_allclose(out[5, 130], 0.5 * 128 + 0.5 * cold, atol=3)


def test_a_flat_attention_map_is_a_uniform_tint_and_bad_grids_are_refused():
    scene = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    flat = np.asarray(attention_overlay(scene, np.full((7, 7), 1 / 49), alpha=0.0))
    assert np.array_equal(flat, np.asarray(scene))            # alpha 0: the scene itself
    with pytest.raises(ValueError, match="2-D grid"):
        attention_overlay(scene, np.ones(49))


def test_the_sheet_is_one_png_with_a_thumbnail_per_hit(tmp_path):
    product = tmp_path / "p.jpg"
    Image.new("RGB", (50, 80), (10, 200, 10)).save(product)
    hits = [SimpleNamespace(rank=i + 1, product_id=f"p{i}", category="A|Shoes", score=0.9 - i / 10,
                            image_path=str(product) if i % 2 == 0 else None) for i in range(7)]
    scene = Image.new("RGB", (300, 200), (200, 100, 50))
    out = render_sheet(tmp_path / "sheet.png", scene, np.full((7, 7), 1 / 49), "A|Shoes", hits, title="t")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.height > 400
        width, pixels = img.width, np.asarray(img.convert("RGB"))
    assert (np.abs(pixels.astype(int) - (10, 200, 10)).sum(axis=-1) < 30).sum() > 1000   # the thumbnails drawn
    fewer = render_sheet(tmp_path / "two.png", scene, np.full((7, 7), 1 / 49), "A|Shoes", hits[:2])
    with Image.open(fewer) as img:
        assert img.width < width - 300       # two columns of thumbnails instead of five
    assert not list(tmp_path.glob(".*tmp"))
