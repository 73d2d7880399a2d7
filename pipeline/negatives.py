"""Negatives of the paper's protocol: products of the positive's category that are not in the scene, and mining.

Training and evaluation draw their negatives from pools made here, so "same category, not in this
scene" has one definition. The dataset is duck-typed: `pairs` (scene_id, product_id) and
`products` (product_id -> .category).
"""
from __future__ import annotations

from collections.abc import Iterable

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


def nearest_negatives(pools: dict[int, list[str]], distances: dict[int, np.ndarray], hardest: int
                      ) -> dict[int, list[str]]:
    """Hard-negative mining: for each pair, the `hardest` products of its pool nearest to its scene.

    `distances[j]` holds the model's distance from pair j's scene to each product of `pools[j]`, in pool
    order. Only the pool is searched (same category, not in the scene: never the positive), and ties keep
    pool order (a stable sort), so the same model and pools mine the same negatives on every run.
    """
    if hardest < 1:
        raise ValueError(f"hardest must be >= 1, got {hardest}")
    out = {}
    for j, pool in pools.items():
        d = np.asarray(distances[j], dtype=np.float64)
        if d.shape != (len(pool),):
            raise ValueError(f"pair {j}: {d.shape[0] if d.ndim else 0} distances for a pool of {len(pool)}")
        out[j] = [pool[i] for i in np.argsort(d, kind="stable")[:hardest]]
    return out


def draw_mined(rng: np.random.Generator, pool: list[str], hard: list[str], k: int) -> list[str]:
    """`k` negatives: half (rounded up) from the mined `hard` ones, the rest at random from the whole `pool`.

    Random ones stay in the mix: hard negatives alone include the look-alikes the labels cannot tell
    apart (a false negative is the nearest "wrong" product more often than not).
    """
    n_hard = (k + 1) // 2
    return draw_negatives(rng, hard, n_hard) + draw_negatives(rng, pool, k - n_hard)
