"""Evaluation scoring: the vectorised distance matrices against an explicit loop over queries and candidates."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jobs.evaluation.evaluate import Query, QueryEmbeddings, distance_matrices, score_queries
from pipeline.distances import global_distance, hybrid_distance, local_distance
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
        queries.append(Query(q, f"s{q}", chosen[0], "shoes" if q % 2 else "bags", tuple(chosen[1:4]), tuple(chosen[1:])))
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
        def d_h(p):
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


def test_non_candidates_are_left_unscored(setup):
    emb, cats, queries = setup
    got = distance_matrices(emb, queries[:1], cats.__getitem__, methods=("hybrid",))["hybrid"]
    scored = {emb.product_index[p] for p in (queries[0].product_id, *queries[0].rank_negatives)}
    assert all(np.isnan(got[0, c]) != (c in scored) for c in range(got.shape[1]))
