"""Ranking metrics of the paper's task: fill-in-the-blank accuracy and hit rate at K."""
from __future__ import annotations

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
