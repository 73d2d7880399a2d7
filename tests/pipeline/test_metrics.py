"""FITB and HR@K against hand-worked rankings; expected FITB and the bootstrap against brute force."""
from itertools import combinations

import numpy as np
import pytest

from pipeline.metrics import (
    average_precision,
    bootstrap_mean,
    expected_fitb,
    fitb_correct,
    hit_rates,
    paired_bootstrap,
    positive_rank,
    roc_auc,
)


def test_positive_rank_counts_negatives_at_or_below_the_positive():
    assert positive_rank(np.array([0.5, 0.7, 0.9])) == 0
    assert positive_rank(np.array([0.5, 0.1, 0.9, 0.2])) == 2
    assert positive_rank(np.array([0.5, 0.5])) == 1  # a tie counts against the positive


def test_fitb_needs_the_positive_strictly_first():
    assert fitb_correct(np.array([0.1, 0.2, 0.3, 0.4]))
    assert not fitb_correct(np.array([0.3, 0.2, 0.5, 0.4]))


def test_hit_rates_against_a_loop():
    ranks = np.array([0, 3, 9, 10, 49, 50, 200])
    got = hit_rates(ranks, ks=(1, 10, 50))
    for k in (1, 10, 50):
        assert got[f"hr@{k}"] == pytest.approx(sum(r < k for r in ranks) / len(ranks))


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError):
        positive_rank(np.array([]))
    with pytest.raises(ValueError):
        hit_rates([])


@pytest.mark.parametrize("seed", range(5))
def test_expected_fitb_equals_the_mean_over_every_draw_of_three(seed):
    rng = np.random.default_rng(seed)
    distances = rng.integers(0, 6, size=12).astype(float)  # small integers: ties included
    draws = [fitb_correct(np.array([distances[0], *distances[list(c)]])) for c in combinations(range(1, 12), 3)]
    assert expected_fitb(distances) == pytest.approx(np.mean(draws))


def test_expected_fitb_bounds_and_bad_input():
    assert expected_fitb(np.array([0.0, 1, 2, 3, 4])) == 1.0
    assert expected_fitb(np.array([9.0, 1, 2, 3, 4])) == 0.0
    with pytest.raises(ValueError, match="at least 3 negatives"):
        expected_fitb(np.array([0.0, 1.0, 2.0]))


def test_paired_bootstrap_interval_holds_the_mean_difference_and_shrinks_with_more_queries():
    rng = np.random.default_rng(0)
    a = rng.random(400)
    b = a - 0.1 + rng.normal(0, 0.05, 400)
    got = paired_bootstrap(a, b)
    assert got["diff"] == pytest.approx(np.mean(a - b))
    assert got["ci95"][0] < got["diff"] < got["ci95"][1]
    assert got["ci95"][0] > 0.09 and got["ci95"][1] < 0.11
    small = paired_bootstrap(a[:40], b[:40])
    assert small["ci95"][1] - small["ci95"][0] > got["ci95"][1] - got["ci95"][0]
    assert paired_bootstrap(a, a) == {"diff": 0.0, "ci95": [0.0, 0.0]}
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:3])


def test_average_precision_is_the_mean_precision_at_each_positive():
    rng = np.random.default_rng(5)
    for _ in range(20):
        y = (rng.random(30) < 0.4).astype(float)
        s = rng.random(30)                       # no ties
        if not y.any():
            continue
        ranked = y[np.argsort(-s)]
        expected = np.mean([ranked[: i + 1].sum() / (i + 1) for i in range(30) if ranked[i]])
        assert average_precision(y, s) == pytest.approx(expected)
    assert average_precision([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert average_precision([0, 1], [0.5, 0.5]) == 0.5          # a tie counts at its end
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_roc_auc_is_the_weighted_share_of_ordered_pairs():
    rng = np.random.default_rng(6)
    y = rng.random(40) < 0.5
    s = rng.integers(0, 8, 40).astype(float)    # many ties
    w = rng.uniform(0.1, 2.0, 40)
    num = den = 0.0
    for i in np.flatnonzero(y):
        for j in np.flatnonzero(~y):
            num += w[i] * w[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
            den += w[i] * w[j]
    assert roc_auc(y, s, w) == pytest.approx(num / den)
    assert roc_auc([1, 0], [1.0, 0.0]) == 1.0 and roc_auc([1, 0], [0.0, 1.0]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))
    with pytest.raises(ValueError, match="one length"):
        roc_auc([1, 0], [0.1])


def test_bootstrap_mean_equals_an_explicit_resampling_loop_and_the_paired_form():
    x = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.25])
    rng = np.random.default_rng(7)
    means = [x[rng.integers(0, x.size, size=x.size)].mean() for _ in range(300)]
    got = bootstrap_mean(x, n_resamples=300, seed=7)
    assert got["mean"] == pytest.approx(x.mean())
    assert got["ci95"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    paired = paired_bootstrap(x, np.zeros_like(x), n_resamples=300, seed=7)
    assert paired["diff"] == pytest.approx(got["mean"]) and paired["ci95"] == pytest.approx(got["ci95"])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])
