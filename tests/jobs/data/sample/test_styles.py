"""Looks and items: an item takes its zone's pattern and texture, and colours close to its zone's."""
import colorsys
import math

import numpy as np

from jobs.data.sample.shapes import CATEGORIES, SHAPES
from jobs.data.sample.styles import PATTERNS, TEXTURES, make_item, sample_look


def test_a_look_has_two_zones_of_known_patterns_and_a_texture():
    rng = np.random.default_rng(0)
    for _ in range(100):
        look = sample_look(rng)
        assert len(look.zones) == 2 and look.texture in TEXTURES
        for zone in look.zones:
            assert zone.pattern in PATTERNS and 0.25 <= zone.duty <= 0.6
            assert all(0 <= h < 1 and 0 <= s <= 1 and 0 <= v <= 1 for h, s, v in zone.colors)


def test_an_item_varies_its_zone_style():
    rng = np.random.default_rng(1)
    own, other = [], []
    looks = [sample_look(rng) for _ in range(200)]
    for k, look in enumerate(looks):
        zone, category = k % 2, k % len(CATEGORIES)
        item = make_item(rng, look, zone, category)
        style = look.zones[zone]
        assert item.category == category and item.pattern == style.pattern and item.texture == look.texture
        assert all(0 <= c <= 1 for colour in item.colors for c in colour)
        assert abs(math.log(item.aspect / SHAPES[CATEGORIES[category][0]].aspect)) < 0.5

        # the dominant colour is one of the zone's first two, jittered
        def nearest(zone_style, dominant=item.colors[0]):
            return min(np.abs(np.subtract(dominant, colorsys.hsv_to_rgb(*c))).sum() for c in zone_style.colors[:2])
        own.append(nearest(style))
        other.append(nearest(looks[k - 1].zones[zone]))
    assert np.median(own) < 0.25 * np.median(other)
