"""Evaluation through the index on the retrieval tests' world: two-stage against the exhaustive ranking."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from jobs.data.datasets import Pair
from jobs.evaluation.through_index import compare_through_index, ranking_figures, smallest_cut, through_index_report
from pipeline.evaluation import Query
from pipeline.images import load_image
from pipeline.scene_crops import exclude_product
from tests.retrieval.world import CATEGORIES, PER_CATEGORY, exhaustive, ranked

BOX = (0.1, 0.2, 0.45, 0.6)


@pytest.fixture(scope="module")
def queries(world):
    """Six pairs: in each scene, one positive of each category (duck-typed dataset and queries)."""
    scenes = {f"s{j}": path for j, path in enumerate(world.scenes)}
    chosen = [i for i in range(len(world.product_ids)) if i % 7 in (0, 4)][:6]
    pairs = [Pair(f"s{n % 2}", world.product_ids[i], BOX) for n, i in enumerate(chosen)]
    dataset = SimpleNamespace(scenes=scenes, pairs=pairs)
    qs = [Query(j, p.scene_id, p.product_id, world.categories[i], (), ())
          for j, (p, i) in enumerate(zip(pairs, chosen, strict=True))]
    assert {q.category for q in qs} == set(CATEGORIES)
    return dataset, qs


def report(world, retriever, queries, **kw):
    dataset, qs = queries
    return through_index_report(dataset, qs, checkpoint=world.checkpoint, index_dir=world.index_dir, exclusion="mask",
                                retriever=retriever, **kw)


def test_the_exhaustive_ranking_is_the_oracles(world, retriever, queries):
    dataset, qs = queries
    ranks = []
    for q in qs:
        pair = dataset.pairs[q.pair_index]
        scene = retriever.encode_scene(exclude_product(load_image(dataset.scenes[pair.scene_id]), BOX, "mask"))
        oracle = exhaustive(retriever, scene)
        among = {pid for pid, o in oracle.items() if o["category"] == q.category}
        ranks.append(ranked(oracle, among=among).index(q.product_id))
    got = report(world, retriever, queries, candidates=PER_CATEGORY, k=2)
    assert got["exhaustive"] == ranking_figures(ranks)
    assert got["n_queries"] == len(qs) and got["skipped"] == {"category not in the index": 0,
                                                               "positive not in the index": 0}


def test_with_every_product_as_candidate_two_stage_equals_exhaustive(world, retriever, queries):
    got = report(world, retriever, queries, candidates=PER_CATEGORY, k=2)
    assert got["two_stage"] == got["exhaustive"] and got["two_stage_cut_positives"] == 0
    assert got["products_per_category"] == dict.fromkeys(CATEGORIES, PER_CATEGORY)


@pytest.mark.parametrize("c", [1, 2, 3])
def test_with_few_candidates_two_stage_is_never_higher(world, retriever, queries, c):
    got = report(world, retriever, queries, candidates=c, k=1, cut_factors=(1,))
    for metric, value in got["two_stage"].items():
        assert value <= got["exhaustive"][metric] + 1e-12, metric


@pytest.mark.parametrize("c", [1, 2, 3])
def test_with_the_hybrid_stage_one_two_stage_is_the_exhaustive_ranking_cut_at_c(world, retriever, global_retriever,
                                                                                queries, c):
    got = report(world, retriever, queries, candidates=c, k=1, cut_factors=(1,))
    assert got["stage1"] == "hybrid"
    ranks = got["per_query"]["exhaustive"]
    assert got["per_query"]["two_stage"] == [r if r < c else None for r in ranks]
    paper = report(world, global_retriever, queries, candidates=c, k=1, cut_factors=(1,))
    assert paper["stage1"] == "global" and paper["per_query"]["exhaustive"] == ranks   # exhaustive is exhaustive


def test_the_candidate_cut_curve_rises_to_full_overlap(world, retriever, queries):
    got = report(world, retriever, queries, candidates=PER_CATEGORY, k=2, cut_factors=(1, 2, 5, 10))
    for name in ("per_category", "flat"):
        curve = got["candidate_cut"][name]
        assert [row["candidates"] for row in curve] == [2, 4, 10, 20]
        overlaps = [row["overlap"] for row in curve]
        assert overlaps == sorted(overlaps)          # a larger C holds the smaller one's exhaustive top-k
        assert all(0.0 <= row["min"] <= row["overlap"] <= 1.0 for row in curve)
    assert got["candidate_cut"]["per_category"][2]["overlap"] == 1.0      # C = 10 >= the 7 of a category
    assert got["candidate_cut"]["flat"][-1]["overlap"] == 1.0             # C = 20 ~ all 21 products
    assert got["smallest_c"]["per_category"] == smallest_cut(got["candidate_cut"]["per_category"]) <= 10


def test_ranking_figures_count_a_cut_positive_as_a_miss():
    assert ranking_figures([0, 9, None], ks=(1, 10)) == {"hr@1": 1 / 3, "hr@10": 2 / 3,
                                                        "mrr": pytest.approx((1 + 0.1) / 3)}
    assert smallest_cut([{"candidates": 4, "overlap": 0.9}, {"candidates": 8, "overlap": 0.995}]) == 8
    assert smallest_cut([{"candidates": 4, "overlap": 0.9}]) is None


def test_the_candidate_sweep_rows_equal_two_stage_reports_at_each_c(world, retriever, queries):
    got = report(world, retriever, queries, candidates=1, k=1, cut_factors=(1,))
    assert [row["candidates"] for row in got["candidate_sweep"]] == [1, 2, 4]
    for row in got["candidate_sweep"]:
        alone = report(world, retriever, queries, candidates=row["candidates"], k=1, cut_factors=(1,))
        assert {m: row[m] for m in alone["two_stage"]} == alone["two_stage"]
        for k in (10, 50):
            diff = alone["two_stage"][f"hr@{k}"] - alone["exhaustive"][f"hr@{k}"]
            assert row["minus_exhaustive"][f"hr@{k}"]["diff"] == pytest.approx(diff, abs=1e-12)
        assert row["within_agreement"] == all(
            abs(alone["two_stage"][f"hr@{k}"] - alone["exhaustive"][f"hr@{k}"]) <= 0.005 for k in (10, 50))
    first = next((r["candidates"] for r in got["candidate_sweep"] if r["within_agreement"]), None)
    assert got["agreement"]["smallest_c"] == first


def test_with_every_product_as_candidate_the_sweep_agrees_at_once_and_intervals_hold_the_figures(
        world, retriever, queries):
    got = report(world, retriever, queries, candidates=PER_CATEGORY, k=2, cut_factors=(1,))
    assert got["agreement"]["smallest_c"] == PER_CATEGORY
    assert all(row["within_agreement"] for row in got["candidate_sweep"])
    for way in ("two_stage", "exhaustive"):
        for metric, (lo, hi) in got["intervals"][way].items():
            assert lo - 1e-12 <= got[way][metric] <= hi + 1e-12, (way, metric)


def test_the_per_query_ranks_are_the_figures_and_a_comparison_pairs_them(world, retriever, queries):
    _, qs = queries
    cut = report(world, retriever, queries, candidates=1, k=1, cut_factors=(1,))
    full = report(world, retriever, queries, candidates=PER_CATEGORY, k=1, cut_factors=(1,))
    assert cut["per_query"]["keys"] == [f"{q.scene_id}/{q.product_id}" for q in qs]
    for way in ("exhaustive", "two_stage"):
        assert ranking_figures(cut["per_query"][way]) == cut[way]
    diff = compare_through_index(cut, full)
    assert diff["candidates"] == [1, PER_CATEGORY] and diff["n_queries"] == len(qs)
    for k in (10, 50):
        assert diff["exhaustive"][f"hr@{k}"]["diff"] == 0.0            # the same model, the same exhaustive ranks
        assert diff["two_stage"][f"hr@{k}"]["diff"] == pytest.approx(
            cut["two_stage"][f"hr@{k}"] - full["two_stage"][f"hr@{k}"], abs=1e-12)
    doubled = report(world, retriever, queries, candidates=2, k=1, cut_factors=(1,))    # swept at 2, 4 and 8
    same_c = compare_through_index(cut, doubled)["sweep"]                              # cut swept 1, 2 and 4
    assert list(same_c) == ["2", "4"]
    assert all(d["diff"] == 0.0 for by_k in same_c.values() for d in by_k.values())   # one model, one ranking
    shuffled = {**full, "per_query": {**full["per_query"], "keys": full["per_query"]["keys"][::-1]}}
    with pytest.raises(ValueError, match="same queries"):
        compare_through_index(cut, shuffled)
    with pytest.raises(ValueError, match="per-query"):
        compare_through_index(cut, {k: v for k, v in full.items() if k != "per_query"})


def test_the_default_c_row_is_what_a_query_naming_no_c_gets(world, retriever, global_retriever, queries,
                                                             monkeypatch):
    # On the world's exact index the default C (k + margin, capped at the category) ranks as exhaustive does.
    got = report(world, retriever, queries, candidates=PER_CATEGORY, k=2)["default_candidates"]
    assert got["hr@10"] == got["hr@50"] == 1.0 and got["overlap"] == {"per_category": 1.0, "flat": 1.0}
    assert got["candidates"]["top 50, per category"] == [PER_CATEGORY]
    assert all(d["diff"] == 0 for d in got["minus_exhaustive"].values())
    # The row follows the retriever's default: by global distance with a default of C = k, the top k move.
    real = type(retriever).candidate_count
    monkeypatch.setattr(type(retriever), "candidate_count",
                        lambda self, k, candidates=None, *, category=None:
                        real(self, k, k if candidates is None else candidates, category=category))
    cut = report(world, global_retriever, queries, candidates=PER_CATEGORY, k=2)["default_candidates"]
    assert cut["candidates"] == {"top 50, per category": [PER_CATEGORY], "top 2, per category": [2], "top 2, flat": [2]}
    assert cut["overlap"]["per_category"] < 1.0 and cut["overlap"]["flat"] < 1.0
