"""Negatives of the paper's protocol: products of the positive's category that are not in the scene.

Training and evaluation draw their negatives from pools made here, so "same category, not in this
scene" has one definition. The dataset is duck-typed: `pairs` (scene_id, product_id) and
`products` (product_id -> .category).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def negative_pools(dataset, pair_indices: Iterable[int], candidates: Iterable[str]) -> dict[int, list[str]]:
    """For each pair index: the `candidates` of its positive's category that are not in its scene.

    Pools keep the sorted order of the candidates, so seeded draws from them are the same on every
    run. A pair whose pool is empty maps to an empty list.
    """
    by_category: dict[str, list[str]] = {}
    for pid in sorted(candidates):
        by_category.setdefault(dataset.products[pid].category, []).append(pid)
    in_scene: dict[str, set[str]] = {}
    for pair in dataset.pairs:
        in_scene.setdefault(pair.scene_id, set()).add(pair.product_id)
    pools = {}
    for j in pair_indices:
        pair = dataset.pairs[j]
        peers = by_category.get(dataset.products[pair.product_id].category, [])
        pools[j] = [p for p in peers if p not in in_scene[pair.scene_id]]
    return pools


def draw_negatives(rng: np.random.Generator, pool: list[str], k: int) -> list[str]:
    """`k` negatives from `pool`, without replacement unless the pool is smaller than `k`."""
    if not pool:
        raise ValueError("cannot draw negatives from an empty pool")
    picks = rng.choice(len(pool), size=k, replace=len(pool) < k)
    return [pool[i] for i in picks]
