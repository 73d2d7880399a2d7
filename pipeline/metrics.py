"""Ranking metrics of the paper's task: fill-in-the-blank accuracy and hit rate at K."""
from __future__ import annotations

from math import comb

import numpy as np


def positive_rank(distances: np.ndarray) -> int:
    """0-based rank of the positive (index 0) among the candidates; ties count against it."""
    distances = np.asarray(distances)
    if distances.ndim != 1 or distances.size < 1:
        raise ValueError(f"distances must be a non-empty vector with the positive first, got shape {distances.shape}")
    return int((distances[1:] <= distances[0]).sum())


def fitb_correct(distances: np.ndarray) -> bool:
    """Fill in the blank: the positive (index 0) is strictly nearer than every negative."""
    return positive_rank(distances) == 0


def hit_rates(ranks, ks=(1, 10, 50)) -> dict[str, float]:
    """HR@K: the share of queries whose positive ranks in the top K."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to score")
    return {f"hr@{k}": float((ranks < k).mean()) for k in ks}


def expected_fitb(distances: np.ndarray, n_negatives: int = 3) -> float:
    """FITB accuracy averaged over every draw of `n_negatives` from the candidates after the positive.

    The chance that a random draw holds only negatives farther than the positive is C(m, k) / C(n, k),
    with m of the n negatives farther: the sampled FITB's expectation, without its draw-to-draw noise.
    """
    distances = np.asarray(distances)
    if distances.ndim != 1 or distances.size < n_negatives + 1:
        raise ValueError(f"distances must be a vector of the positive and at least {n_negatives} negatives, "
                         f"got shape {distances.shape}")
    farther = int((distances[1:] > distances[0]).sum())
    return comb(farther, n_negatives) / comb(distances.size - 1, n_negatives)


def paired_bootstrap(a, b, *, n_resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over paired per-query scores, with a 95% percentile bootstrap interval over queries."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be non-empty vectors of the same length, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_resamples, diff.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diff.mean()), "ci95": [float(lo), float(hi)]}
