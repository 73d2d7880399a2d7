"""Leaving the product out of its scene: the crop never contains the box."""
import numpy as np
import pytest
from PIL import Image

from common.defaults import EXCLUSION_MARGIN
from pipeline.scene_crops import bbox_to_pixels, exclude_product, grow_box, largest_region_outside


def test_largest_region_is_the_biggest_band_and_misses_the_box():
    # box on the left third: the band to its right is the largest
    assert largest_region_outside((0.0, 0.2, 0.3, 0.8), 100, 100) == (30, 0, 100, 100)
    # box at the bottom: the band above it wins
    assert largest_region_outside((0.1, 0.7, 0.9, 1.0), 100, 100) == (0, 0, 100, 70)


def test_crop_contains_no_pixel_of_the_product():
    scene = np.zeros((120, 160, 3), np.uint8)
    x0, y0, x1, y1 = bbox_to_pixels((0.4, 0.3, 0.7, 0.9), 160, 120)
    scene[y0:y1, x0:x1] = 255
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


@pytest.mark.parametrize("mode", ["crop", "mask"])
def test_a_shadow_just_outside_the_box_is_left_out_too(mode):
    # A drop shadow 3 px beyond the tight box (under the default margin of 4% of 100 px) must not survive.
    scene = np.zeros((100, 100, 3), np.uint8)
    scene[10:40, 40:70] = 255        # the product, box (0.4, 0.1, 0.7, 0.4); the band below it is the largest
    scene[40:43, 43:73] = 128        # its shadow, below and to the right
    out = np.asarray(exclude_product(Image.fromarray(scene), (0.4, 0.1, 0.7, 0.4), mode))
    assert not ((out == 255).all(axis=-1).any() or (out == 128).all(axis=-1).any())
    bare = np.asarray(exclude_product(Image.fromarray(scene), (0.4, 0.1, 0.7, 0.4), mode, margin=0.0))
    assert (bare == 128).all(axis=-1).any()   # without the margin the shadow outlines the product


def test_grow_box_scales_the_margin_by_the_longer_side_and_clamps():
    grown = grow_box((0.1, 0.5, 0.9, 0.6), EXCLUSION_MARGIN, 200, 100)
    assert grown == pytest.approx((0.1 - EXCLUSION_MARGIN, 0.5 - 2 * EXCLUSION_MARGIN, 0.9 + EXCLUSION_MARGIN,
                                   0.6 + 2 * EXCLUSION_MARGIN))
    assert grow_box((0.0, 0.0, 1.0, 1.0), 0.1, 50, 50) == (0.0, 0.0, 1.0, 1.0)
