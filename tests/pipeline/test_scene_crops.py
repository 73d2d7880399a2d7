"""Leaving the product out of its scene: the crop never contains the box."""
import numpy as np
import pytest
from PIL import Image

from pipeline.scene_crops import bbox_to_pixels, exclude_product, largest_region_outside


def test_largest_region_is_the_biggest_band_and_misses_the_box():
    # box on the left third: the band to its right is the largest
    assert largest_region_outside((0.0, 0.2, 0.3, 0.8), 100, 100) == (30, 0, 100, 100)
    # box at the bottom: the band above it wins
    assert largest_region_outside((0.1, 0.7, 0.9, 1.0), 100, 100) == (0, 0, 100, 70)


def test_crop_contains_no_pixel_of_the_product():
    scene = np.zeros((120, 160, 3), np.uint8)
    l, t, r, b = bbox_to_pixels((0.4, 0.3, 0.7, 0.9), 160, 120)
    scene[t:b, l:r] = 255
    out = np.asarray(exclude_product(Image.fromarray(scene), (0.4, 0.3, 0.7, 0.9), "crop"))
    assert out.size and out.max() == 0


def test_mask_keeps_the_frame_and_hides_the_box():
    scene = np.zeros((100, 100, 3), np.uint8)
    scene[20:60, 30:70] = 255
    out = np.asarray(exclude_product(Image.fromarray(scene), (0.3, 0.2, 0.7, 0.6), "mask"))
    assert out.shape == scene.shape
    assert not (out == 255).all(axis=-1).any()


def test_a_box_filling_the_scene_falls_back_to_the_mask():
    scene = Image.new("RGB", (64, 64), (255, 0, 0))
    out = exclude_product(scene, (0.0, 0.0, 1.0, 1.0), "crop")
    assert out.size == (64, 64)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="exclusion mode"):
        exclude_product(Image.new("RGB", (8, 8)), (0, 0, 0.5, 0.5), "blur")
