"""The stage-1 candidate count: the pure rule, and the retriever's default C against the exhaustive oracle."""
from __future__ import annotations

import pytest

from common import defaults
from retrieval.candidate_count import candidate_count
from tests.retrieval.test_retriever import assert_matches_oracle
from tests.retrieval.world import CATEGORIES, N_PRODUCTS, PER_CATEGORY, ranked


@pytest.mark.parametrize("k", [1, 4, 20, 300])
def test_by_the_hybrid_over_an_exact_search_c_is_k_plus_the_margin(k):
    got = candidate_count(k, None, available=10**6, stage1="hybrid", exact=True)
    assert got.count == k + max(k, defaults.CANDIDATES_EXACT_MARGIN)
    assert "exact" in got.reason


@pytest.mark.parametrize("stage1, exact", [("hybrid", False), ("global", True), ("global", False)])
def test_an_approximate_or_global_stage_one_keeps_the_fixed_c(stage1, exact):
    assert candidate_count(20, None, available=10**6, stage1=stage1, exact=exact).count == defaults.CANDIDATES
    assert candidate_count(500, None, available=10**6, stage1=stage1, exact=exact).count == 500   # never below k


@pytest.mark.parametrize("exact", [True, False])
def test_a_count_asked_for_is_kept_raised_to_k_and_capped(exact):
    assert candidate_count(5, 7, available=100, stage1="hybrid", exact=exact).count == 7
    raised = candidate_count(5, 2, available=100, stage1="hybrid", exact=exact)
    assert raised.count == 5 and "raised to k" in raised.reason
    capped = candidate_count(5, 70, available=9, stage1="hybrid", exact=exact)
    assert capped.count == 9 and "capped" in capped.reason
    assert candidate_count(5, None, available=3, stage1="hybrid", exact=exact).count == 3


@pytest.mark.parametrize("k, requested", [(0, None), (3, 0), (3, -1)])
def test_non_positive_counts_are_refused(k, requested):
    with pytest.raises(ValueError):
        candidate_count(k, requested, available=10, stage1="hybrid", exact=True)


@pytest.fixture
def margin_one(monkeypatch):
    """A margin of 1 (C = 2k): the test world's 21 products must leave room for the cut to matter."""
    monkeypatch.setattr(defaults, "CANDIDATES_EXACT_MARGIN", 1)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_the_default_c_gives_the_exhaustive_top_k(retriever, scenes, oracles, margin_one, k):
    for scene, oracle in zip(scenes, oracles, strict=True):
        flat = retriever.retrieve(scene, k=k)
        assert flat.candidates == 2 * k < N_PRODUCTS
        assert_matches_oracle(flat, oracle, ranked(oracle)[:k])
        for category in CATEGORIES:
            among = {pid for pid, o in oracle.items() if o["category"] == category}
            one = retriever.retrieve(scene, k=k, category=category)
            assert one.candidates == min(2 * k, PER_CATEGORY)
            assert_matches_oracle(one, oracle, ranked(oracle, among=among)[:k])
        for cl in retriever.look(scene, k=k):
            among = {pid for pid, o in oracle.items() if o["category"] == cl.category}
            assert cl.candidates == min(2 * k, PER_CATEGORY)
            assert_matches_oracle(cl, oracle, ranked(oracle, among=among)[:k])


def test_the_default_c_is_the_fixed_one_by_the_global_stage_or_an_approximate_search(
        retriever, global_retriever, scenes, margin_one, monkeypatch):
    assert global_retriever.retrieve(scenes[0], k=3).candidates == min(defaults.CANDIDATES, N_PRODUCTS)
    assert global_retriever.candidate_count(3, category="hat").count == PER_CATEGORY
    monkeypatch.setattr(type(retriever.index), "searches_exactly", lambda self, category=None: category == "hat")
    assert retriever.candidate_count(3).count == min(defaults.CANDIDATES, N_PRODUCTS)   # one category approximate
    assert retriever.candidate_count(3, category="hat").count == 6
    assert retriever.candidate_count(3, category="shoes").count == PER_CATEGORY
    assert [cl.candidates for cl in retriever.look(scenes[0], k=3, categories=["hat", "shoes"])] == [6, PER_CATEGORY]
