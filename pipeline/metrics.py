"""Ranking metrics of the paper's task: fill-in-the-blank accuracy and hit rate at K."""
from __future__ import annotations

from math import comb

import numpy as np

from common import defaults


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


def paired_bootstrap(a, b, *, n_resamples: int = 2000, seed: int = defaults.SEED) -> dict[str, float]:
    """Mean of a - b over paired per-query scores, with a 95% percentile bootstrap interval over queries."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be non-empty vectors of the same length, got {a.shape} and {b.shape}")
    mean = bootstrap_mean(a - b, n_resamples=n_resamples, seed=seed)
    return {"diff": mean["mean"], "ci95": mean["ci95"]}


def bootstrap_mean(x, *, n_resamples: int = 2000, seed: int = defaults.SEED) -> dict[str, float]:
    """Mean of per-query scores with a 95% percentile bootstrap interval over queries."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x must be a non-empty vector, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci95": [float(lo), float(hi)]}


def average_precision(labels, scores) -> float:
    """Average precision of a ranking by score (higher = more likely positive): the mean, over the positives,
    of the precision at each positive's rank. Tied scores are ranked together, all counted at the tie's
    end (the pessimistic convention of sklearn's step-wise AP). NaN when there is no positive."""
    labels, scores = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be vectors of one length, got {labels.shape} and {scores.shape}")
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp, seen = np.cumsum(y), np.arange(1, len(y) + 1)
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]          # last index of each group of tied scores
    precision, new_positives = tp[ends] / seen[ends], np.diff(np.r_[0, tp[ends]])
    return float((precision * new_positives).sum() / y.sum())


def roc_auc(labels, scores, weights=None) -> float:
    """Area under the ROC curve: the chance that a positive scores above a negative (ties count half),
    each (positive, negative) pair weighted by the product of their weights. NaN without both classes."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=float)
    if not (labels.shape == scores.shape == weights.shape) or labels.ndim != 1:
        raise ValueError(f"labels, scores and weights must be vectors of one length, got "
                         f"{labels.shape}, {scores.shape} and {weights.shape}")
    w_pos, w_neg = weights[labels].sum(), weights[~labels].sum()
    if w_pos <= 0 or w_neg <= 0:
        return float("nan")
    values, group = np.unique(scores, return_inverse=True)
    pos = np.bincount(group, weights=np.where(labels, weights, 0.0), minlength=len(values))
    neg = np.bincount(group, weights=np.where(labels, 0.0, weights), minlength=len(values))
    below = np.cumsum(neg) - neg                                   # negative weight strictly below each value
    return float((pos * (below + 0.5 * neg)).sum() / (w_pos * w_neg))
