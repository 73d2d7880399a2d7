"""Negative pools and draws against their definition: same category as the positive, not in the scene."""
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.negatives import draw_mined, draw_negatives, nearest_negatives, negative_pools


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


def _big_dataset(seed=0, n_scenes=30, n_products=120):
    rng = np.random.default_rng(seed)
    cats = {f"p{i}": ("shoes", "bags", "hats")[i % 3] for i in range(n_products)}
    pairs = [(f"S{s}", f"p{i}") for s in range(n_scenes) for i in rng.choice(n_products, 3, replace=False)]
    return SimpleNamespace(products={p: SimpleNamespace(category=c) for p, c in cats.items()},
                           pairs=[SimpleNamespace(scene_id=s, product_id=p) for s, p in pairs])


def test_mining_returns_the_nearest_of_the_pool_never_the_positive_nor_another_category():
    ds = _big_dataset()
    pools = negative_pools(ds, range(len(ds.pairs)), ds.products)
    # A "model" that finds the positive and every product of another category nearest of all: the miner
    # must still return only same-category products outside the scene, nearest first.
    closeness = np.random.default_rng(1).random(len(ds.products))
    def distance(j, p):
        pair = ds.pairs[j]
        if p == pair.product_id or ds.products[p].category != ds.products[pair.product_id].category:
            return -1.0
        return float(closeness[int(p[1:])])
    distances = {j: np.array([distance(j, p) for p in pool]) for j, pool in pools.items()}
    mined = nearest_negatives(pools, distances, hardest=5)
    in_scene = {}
    for pair in ds.pairs:
        in_scene.setdefault(pair.scene_id, set()).add(pair.product_id)
    for j, got in mined.items():
        pair = ds.pairs[j]
        category = ds.products[pair.product_id].category
        assert pair.product_id not in got and not set(got) & in_scene[pair.scene_id]
        assert {ds.products[p].category for p in got} == {category}
        expected = sorted(pools[j], key=lambda p: distance(j, p))[:5]     # the loop: sort the pool by distance
        assert got == expected


def test_mined_draws_are_deterministic_with_a_seed_and_half_hard():
    pool, hard = [f"p{i}" for i in range(50)], ["p3", "p7", "p9"]
    first = draw_mined(np.random.default_rng(4), pool, hard, 4)
    assert first == draw_mined(np.random.default_rng(4), pool, hard, 4)
    assert set(first[:2]) <= set(hard) and len(first) == 4 and set(first) <= set(pool)
    with pytest.raises(ValueError, match="distances"):
        nearest_negatives({0: ["a", "b"]}, {0: np.zeros(3)}, hardest=1)
