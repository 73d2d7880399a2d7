"""FITB and HR@K against hand-worked rankings."""
import numpy as np
import pytest

from pipeline.metrics import fitb_correct, hit_rates, positive_rank


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
