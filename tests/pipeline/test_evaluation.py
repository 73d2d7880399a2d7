"""Evaluation maths: queries against the protocol, the vectorised distance matrices against an explicit loop."""
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.distances import global_distance, hybrid_distance, local_distance
from pipeline.embedder import build_embedder
from pipeline.evaluation import (
    Query,
    QueryEmbeddings,
    build_queries,
    category_lookup,
    classifier_samples,
    compare_methods,
    compare_runs,
    distance_matrices,
    per_query_record,
    per_query_scores,
    query_seed,
    score_queries,
)
from pipeline.metrics import expected_fitb, fitb_correct, positive_rank


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    Q, R, P, d, C = 7, 49, 40, 8, 12
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    pids = [f"p{i}" for i in range(P)]
    emb = QueryEmbeddings(unit(Q, d), unit(Q, R, d), torch.randn(Q, C, generator=g), {p: i for i, p in enumerate(pids)},
                          unit(P, d), torch.randn(P, C, generator=g))
    cats = {"shoes": unit(d), "bags": unit(d)}
    rng = np.random.default_rng(0)
    queries = []
    for q in range(Q):
        chosen = [pids[i] for i in rng.permutation(P)[:20]]
        queries.append(
            Query(q, f"s{q}", chosen[0], "shoes" if q % 2 else "bags", tuple(chosen[1:4]), tuple(chosen[1:]))
        )
    return emb, cats, queries


def test_distance_matrices_equal_one_candidate_at_a_time(setup):
    emb, cats, queries = setup
    got = distance_matrices(emb, queries, cats.__getitem__, methods=("hybrid", "global", "local"))
    for qi, q in enumerate(queries):
        e_c = cats[q.category].reshape(1, 1, -1)
        for p in (q.product_id, *q.rank_negatives):
            row = emb.product_index[p]
            f_p = emb.product_emb[row].reshape(1, 1, -1)
            f_s, f_i = emb.scene_global[qi:qi + 1], emb.scene_regions[qi:qi + 1]
            assert got["global"][qi, row] == pytest.approx(float(global_distance(f_s, f_p)), abs=1e-5)
            assert got["local"][qi, row] == pytest.approx(float(local_distance(f_i, f_p, e_c)), abs=1e-5)
            assert got["hybrid"][qi, row] == pytest.approx(float(hybrid_distance(f_s, f_i, f_p, e_c)), abs=1e-5)


def test_scores_equal_an_explicit_loop_over_candidates(setup):
    emb, cats, queries = setup
    got = score_queries(queries, emb, cats.__getitem__, methods=("hybrid", "backbone"))
    fitb, fitb_expected, ranks = [], [], []
    for qi, q in enumerate(queries):
        def d_h(p, qi=qi, q=q):
            return float(hybrid_distance(emb.scene_global[qi:qi + 1], emb.scene_regions[qi:qi + 1],
                                         emb.product_emb[emb.product_index[p]].reshape(1, 1, -1),
                                         cats[q.category].reshape(1, 1, -1)))
        fitb.append(fitb_correct(np.array([d_h(p) for p in (q.product_id, *q.fitb_negatives)])))
        ranks.append(positive_rank(np.array([d_h(p) for p in (q.product_id, *q.rank_negatives)])))
        fitb_expected.append(expected_fitb(np.array([d_h(p) for p in (q.product_id, *q.rank_negatives)])))
    assert got["hybrid"]["fitb"] == pytest.approx(np.mean(fitb))
    assert got["hybrid"]["fitb_expected"] == pytest.approx(np.mean(fitb_expected))
    assert got["hybrid"]["hr@10"] == pytest.approx(np.mean(np.array(ranks) < 10))
    assert set(got) == {"hybrid", "backbone"}


def test_the_backbone_method_is_cosine_distance_of_pooled_features(setup):
    emb, cats, queries = setup
    got = distance_matrices(emb, queries, cats.__getitem__, methods=("backbone",))["backbone"]
    for qi in (0, 6):
        for row in (0, 5):
            cos = F.cosine_similarity(emb.scene_pooled[qi], emb.product_pooled[row], dim=0)
            assert got[qi, row] == pytest.approx(1.0 - float(cos), abs=1e-5)


def test_embeddings_of_other_queries_are_refused(setup):
    emb, cats, queries = setup
    with pytest.raises(ValueError, match="7 scenes for 2 queries"):
        distance_matrices(emb, queries[:2], cats.__getitem__)


def test_products_outside_the_candidates_of_a_category_are_left_unscored(setup):
    emb, cats, queries = setup
    got = distance_matrices(emb, queries, cats.__getitem__, methods=("hybrid",))["hybrid"]
    for qi, query in enumerate(queries):
        scored = {emb.product_index[p] for q in queries if q.category == query.category
                  for p in (q.product_id, *q.rank_negatives)}
        assert all(np.isnan(got[qi, c]) != (c in scored) for c in range(got.shape[1]))


def test_paired_comparisons_are_mean_differences_of_the_per_query_scores(setup):
    emb, cats, queries = setup
    scores = per_query_scores(queries, emb, cats.__getitem__)
    out = compare_methods(scores, seed=0)
    assert set(out) == {"hybrid - backbone", "hybrid - global", "hybrid - local", "hybrid - paper",
                        "paper - global", "paper - local"}
    gap = scores["hybrid"]["fitb_expected"] - scores["global"]["fitb_expected"]
    assert out["hybrid - global"]["fitb_expected"]["diff"] == pytest.approx(gap.mean())
    assert compare_methods({"hybrid": scores["hybrid"]}) == {}


def test_two_runs_compare_on_their_per_query_records_as_an_explicit_paired_loop(setup):
    emb, cats, queries = setup
    a = per_query_record(queries, per_query_scores(queries, emb, cats.__getitem__))
    flipped = {name: -v for name, v in cats.items()}        # another "run": the same queries, other distances
    b = per_query_record(queries, per_query_scores(queries, emb, flipped.__getitem__))
    assert a["keys"] == [f"{q.scene_id}/{q.product_id}" for q in queries]
    out = compare_runs(a, b)
    for k in (10, 50):
        loop = [(ra < k) - (rb < k) for ra, rb in zip(a["methods"]["hybrid"]["rank"], b["methods"]["hybrid"]["rank"],
                                                       strict=True)]
        assert out[f"hr@{k}"]["diff"] == pytest.approx(np.mean(loop))
        assert out[f"hr@{k}"]["ci95"][0] <= out[f"hr@{k}"]["diff"] <= out[f"hr@{k}"]["ci95"][1]
    fitb = np.subtract(a["methods"]["hybrid"]["fitb_expected"], b["methods"]["hybrid"]["fitb_expected"])
    assert out["fitb_expected"]["diff"] == pytest.approx(fitb.mean())
    assert compare_runs(a, a)["hr@10"] == {"diff": 0.0, "ci95": [0.0, 0.0]}
    json.dumps(a)                                            # it goes into report.json as it is
    with pytest.raises(ValueError, match="same queries"):
        compare_runs(a, {**b, "keys": b["keys"][::-1]})


def _dataset():
    products = {f"s{i}": SimpleNamespace(category="shoes") for i in range(12)}
    products |= {f"b{i}": SimpleNamespace(category="bags") for i in range(3)}
    pair = SimpleNamespace
    pairs = [pair(scene_id="A", product_id="s0"), pair(scene_id="A", product_id="s1"),
             pair(scene_id="B", product_id="s2"), pair(scene_id="B", product_id="b0")]
    return SimpleNamespace(pairs=pairs, products=products)


def test_queries_draw_same_category_negatives_outside_the_scene_seeded_per_pair():
    ds = _dataset()
    queries = build_queries(ds, range(4), seed=0, fitb_negatives=3, rank_negatives=5)
    # scene B's bag has only b1, b2 outside the scene: too few for a 3-negative FITB question.
    assert [q.pair_index for q in queries] == [0, 1, 2]
    for q in queries:
        in_scene = {p.product_id for p in ds.pairs if p.scene_id == q.scene_id}
        assert q.category == "shoes" and len(q.rank_negatives) == 5
        assert all(ds.products[p].category == "shoes" and p not in in_scene for p in q.rank_negatives)
        assert q.fitb_negatives == q.rank_negatives[:3]
    assert build_queries(ds, range(4), seed=0, fitb_negatives=3, rank_negatives=5) == queries
    assert build_queries(ds, range(4), seed=1, fitb_negatives=3, rank_negatives=5) != queries


def test_query_seeds_keep_their_key_format():
    # The key format fixes every reported figure: a refactor must not change it.
    key = json.dumps([0, "A", "s0"]).encode()
    assert query_seed(0, "A", "s0") == int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def test_category_lookup_is_the_unit_category_embedding():
    embedder = build_embedder(categories=["bags", "shoes"], with_backbone=False, dim=8)
    got = category_lookup(embedder)("shoes")
    assert got.shape == (8,) and got.device.type == "cpu"
    assert torch.allclose(got, F.normalize(embedder.category.weight[1], dim=0))


def test_classifier_samples_weigh_each_query_one_positive_against_one_negative(setup):
    emb, cats, queries = setup
    dist = distance_matrices(emb, queries, cats.__getitem__, methods=("hybrid",))["hybrid"]
    d, y, w = classifier_samples(dist, queries, emb)
    start = 0
    for qi, q in enumerate(queries):
        candidates = (q.product_id, *q.rank_negatives)
        part = slice(start, start + len(candidates))
        start += len(candidates)
        assert list(y[part]) == [1.0] + [0.0] * (len(candidates) - 1)
        assert d[part].tolist() == pytest.approx([float(dist[qi, emb.product_index[p]]) for p in candidates])
        assert w[part][0] == 1.0 and w[part][1:].sum() == pytest.approx(1.0)
    assert start == len(d) and w[y == 1].sum() == pytest.approx(w[y == 0].sum())
