"""Negative pools and draws against their definition: same category as the positive, not in the scene."""
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.negatives import draw_negatives, negative_pools


def _dataset():
    cats = {"s1": "shoes", "s2": "shoes", "s3": "shoes", "s4": "shoes", "b1": "bags", "b2": "bags"}
    pairs = [("A", "s1"), ("A", "s2"), ("A", "b1"), ("B", "s3"), ("C", "b2")]
    return SimpleNamespace(products={p: SimpleNamespace(category=c) for p, c in cats.items()},
                           pairs=[SimpleNamespace(scene_id=s, product_id=p) for s, p in pairs])


def test_pools_hold_the_candidates_of_the_positives_category_outside_its_scene():
    ds = _dataset()
    pools = negative_pools(ds, range(5), ["s4", "s3", "s2", "s1", "b2", "b1"])
    assert pools == {0: ["s3", "s4"], 1: ["s3", "s4"], 2: ["b2"], 3: ["s1", "s2", "s4"], 4: ["b1"]}


def test_pools_draw_only_from_the_given_candidates():
    ds = _dataset()
    assert negative_pools(ds, [3, 4], ["s1", "s3"]) == {3: ["s1"], 4: []}


def test_draws_are_seeded_and_without_replacement_unless_the_pool_is_too_small():
    pool = [f"p{i}" for i in range(10)]
    first = draw_negatives(np.random.default_rng(0), pool, 4)
    assert first == draw_negatives(np.random.default_rng(0), pool, 4)
    assert len(set(first)) == 4 and set(first) <= set(pool)
    small = draw_negatives(np.random.default_rng(0), ["a", "b"], 5)
    assert len(small) == 5 and set(small) <= {"a", "b"}
    with pytest.raises(ValueError, match="empty pool"):
        draw_negatives(np.random.default_rng(0), [], 1)
