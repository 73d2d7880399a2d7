"""Photographic effects: shadows darken only near the item, tone tables, bounded seeded noise."""
import numpy as np
from PIL import Image

from jobs.data.sample.effects import add_noise, drop_shadow, point_table


def test_point_table_is_identity_at_gain_one_and_per_band_otherwise():
    assert point_table(1.0) == list(range(256)) * 3
    table = point_table([2.0, 1.0, 0.5], [0.0, 10.0, 0.0])
    assert table[100] == 200 and table[200] == 255 and table[256 + 100] == 110 and table[512 + 100] == 50


def test_drop_shadow_darkens_under_the_alpha_only():
    canvas = Image.new("RGB", (40, 40), (200, 200, 200))
    alpha = np.zeros((10, 10), np.uint8)
    alpha[2:8, 2:8] = 255
    drop_shadow(canvas, alpha, 15, 15, radius=1.5, strength=0.5)
    pixels = np.asarray(canvas)[..., 0]
    assert pixels[20, 20] < 200 and pixels[0, 0] == 200 and pixels[39, 39] == 200


def test_add_noise_is_bounded_and_fixed_by_the_generator():
    img = Image.new("RGB", (64, 48), (128, 128, 128))
    a = add_noise(img, np.random.default_rng(5), 3)
    b = add_noise(img, np.random.default_rng(5), 3)
    c = add_noise(img, np.random.default_rng(6), 3)
    assert a.shape == (48, 64, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a.astype(int) - 128).max() == 3
    big = add_noise(Image.new("RGB", (600, 520), (128, 128, 128)), np.random.default_rng(0), 2)
    assert big.shape == (520, 600, 3) and np.abs(big.astype(int) - 128).max() == 2   # larger than the tile
