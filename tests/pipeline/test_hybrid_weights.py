"""The fitted hybrid distance: oracle tests against the paper's form and explicit loops, the fit, the checkpoint."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.distances import all_distances, combine, global_distance, hybrid_distance, local_distance
from pipeline.embedder import build_embedder
from pipeline.evaluation import (
    WEIGHT_GRID,
    Query,
    QueryEmbeddings,
    distance_matrices,
    fit_local_weights,
    fold_of,
    out_of_fold_scores,
    weight_grid_scores,
)

CATS = ["A|Shoes", "A|Bags", "A|Hats"]


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


@pytest.fixture
def batch():
    B, R, M, d = 3, 49, 5, 8
    return unit(B, d, seed=1), unit(B, R, d, seed=2), unit(B, M, d, seed=3), unit(B, M, d, seed=4)


def test_equal_weights_are_the_papers_form_exactly(batch):
    f_s, f_i, f_p, e_c = batch
    paper = 0.5 * (global_distance(f_s, f_p) + local_distance(f_i, f_p, e_c))
    half = torch.full(paper.shape, 0.5, dtype=torch.float64)
    assert torch.equal(hybrid_distance(f_s, f_i, f_p, e_c), paper)
    assert torch.equal(hybrid_distance(f_s, f_i, f_p, e_c, half), paper)
    assert torch.equal(hybrid_distance(f_s, f_i, f_p, e_c, 0.5), paper)
    d = all_distances(f_s, f_i, f_p, e_c, half)
    assert torch.equal(d["hybrid"], d["paper"]) and torch.equal(d["paper"], paper)


def test_the_ends_of_the_weight_are_the_halves(batch):
    f_s, f_i, f_p, e_c = batch
    assert torch.equal(hybrid_distance(f_s, f_i, f_p, e_c, 0.0), global_distance(f_s, f_p))
    assert torch.equal(hybrid_distance(f_s, f_i, f_p, e_c, 1.0), local_distance(f_i, f_p, e_c))


def test_batched_weights_equal_a_loop_over_candidates(batch):
    f_s, f_i, f_p, e_c = batch
    w = torch.rand(f_p.shape[:2], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = hybrid_distance(f_s, f_i, f_p, e_c, w)
    for b in range(f_p.shape[0]):
        for m in range(f_p.shape[1]):
            one = (f_s[b:b + 1], f_i[b:b + 1], f_p[b:b + 1, m:m + 1], e_c[b:b + 1, m:m + 1])
            d_g, d_l = float(global_distance(one[0], one[2])), float(local_distance(*one[1:]))
            assert float(got[b, m]) == pytest.approx((1 - float(w[b, m])) * d_g + float(w[b, m]) * d_l, abs=1e-12)


def test_a_weight_of_the_wrong_shape_is_refused(batch):
    f_s, f_i, f_p, e_c = batch
    with pytest.raises(ValueError, match="local_weight"):
        hybrid_distance(f_s, f_i, f_p, e_c, torch.full((2, 2), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="local_weight"):
        combine(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    Q, R, P, d, C = 8, 49, 40, 8, 12
    unit32 = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    pids = [f"p{i}" for i in range(P)]
    emb = QueryEmbeddings(unit32(Q, d), unit32(Q, R, d), torch.randn(Q, C, generator=g),
                          {p: i for i, p in enumerate(pids)}, unit32(P, d), torch.randn(P, C, generator=g))
    cats = {"shoes": unit32(d), "bags": unit32(d)}
    rng = np.random.default_rng(0)
    queries = []
    for q in range(Q):
        chosen = [pids[i] for i in rng.permutation(P)[:20]]
        queries.append(Query(q, f"s{q}", chosen[0], "shoes" if q % 2 else "bags", tuple(chosen[1:4]),
                             tuple(chosen[1:])))
    return emb, cats, queries


def test_per_category_weights_are_applied_to_their_own_rows(setup):
    emb, cats, queries = setup
    weights = {"shoes": 0.9, "bags": 0.2}
    got = distance_matrices(emb, queries, cats.__getitem__, methods=("hybrid", "paper", "global", "local"),
                            local_weights=weights)
    for qi, q in enumerate(queries):
        cols = [emb.product_index[p] for p in (q.product_id, *q.rank_negatives)]
        w = weights[q.category]
        expected = (1 - w) * got["global"][qi, cols] + w * got["local"][qi, cols]
        np.testing.assert_allclose(got["hybrid"][qi, cols], expected, atol=1e-6)
        np.testing.assert_allclose(got["paper"][qi, cols], 0.5 * (got["global"][qi, cols] + got["local"][qi, cols]),
                                   atol=1e-6)
    plain = distance_matrices(emb, queries, cats.__getitem__, methods=("hybrid",))["hybrid"]
    np.testing.assert_array_equal(np.isnan(plain), np.isnan(got["paper"]))
    np.testing.assert_allclose(plain[~np.isnan(plain)], got["paper"][~np.isnan(plain)], atol=0)


def fake_matrices(queries, emb, good: dict[str, str]):
    """Global and local matrices where the half named by good[category] ranks the positive first, the other last."""
    n = len(emb.product_index)
    d_g, d_l = np.full((len(queries), n), np.nan), np.full((len(queries), n), np.nan)
    for qi, q in enumerate(queries):
        cols = [emb.product_index[p] for p in (q.product_id, *q.rank_negatives)]
        right, wrong = np.linspace(0.1, 2.0, len(cols)), np.linspace(2.0, 0.1, len(cols))
        d_g[qi, cols], d_l[qi, cols] = (right, wrong) if good[q.category] == "global" else (wrong, right)
    return d_g, d_l


def test_the_fit_picks_the_half_that_carries_the_evidence_per_category(setup):
    emb, _, queries = setup
    d_g, d_l = fake_matrices(queries, emb, {"shoes": "local", "bags": "global"})
    fit = fit_local_weights(d_g, d_l, queries, emb, min_queries=4)
    assert fit["weights"]["shoes"] > 0.5 > fit["weights"]["bags"]
    assert sorted(fit["per_category_fitted"]) == ["bags", "shoes"]
    scores = weight_grid_scores(d_g, d_l, queries, emb)
    for category, w in fit["weights"].items():   # on its own queries, the fit is at least as good as either half
        rows = [qi for qi, q in enumerate(queries) if q.category == category]
        best = scores[rows].mean(0)
        assert best[WEIGHT_GRID.index(w)] >= max(best[0], best[-1])


def test_small_categories_take_the_global_weight_and_ties_keep_the_papers_half(setup):
    emb, _, queries = setup
    d_g, d_l = fake_matrices(queries, emb, {"shoes": "local", "bags": "local"})
    fit = fit_local_weights(d_g, d_l, queries, emb, min_queries=5)   # 4 queries a category: too few
    assert fit["per_category_fitted"] == [] and fit["global_weight"] > 0.5
    assert fit["weights"] == {"bags": fit["global_weight"], "shoes": fit["global_weight"]}
    same = fit_local_weights(d_g, d_g, queries, emb, min_queries=1)  # both halves equal: nothing beats 1/2
    assert set(same["weights"].values()) == {0.5} and same["global_weight"] == 0.5


def test_fitted_weights_travel_in_the_checkpoint_and_an_older_one_loads_as_the_papers_form(tmp_path):
    heads = build_embedder(categories=CATS, with_backbone=False, dim=8, hidden=0)
    heads.set_local_weights({"A|Bags": 0.8, "A|Hats": 0.1})
    path = tmp_path / "new" / "checkpoint.pt"
    save_checkpoint(path, heads, config={}, extra={"hybrid": {"form": "fitted"}})
    back = load_checkpoint(path, with_backbone=False)
    assert back.embedder.local_weights_by_name() == pytest.approx({"A|Shoes": 0.5, "A|Bags": 0.8, "A|Hats": 0.1})
    assert back.hybrid_form == "fitted"
    assert torch.equal(back.embedder.local_weights(torch.tensor([[1, 2], [0, 1]])).float(),
                       torch.tensor([[0.8, 0.1], [0.5, 0.8]]))

    payload = torch.load(path, weights_only=True)
    del payload["heads"]["hybrid_local_weight"]                   # as written before the weights existed
    old = tmp_path / "old" / "checkpoint.pt"
    old.parent.mkdir()
    torch.save(payload, old)
    loaded = load_checkpoint(old, with_backbone=False)
    assert set(loaded.embedder.local_weights_by_name().values()) == {0.5}
    assert any("paper" in note for note in loaded.notes)
    with pytest.raises(ValueError, match="local weight"):
        heads.set_local_weights({"A|Bags": 1.5})


def _explicit_pick(rows: np.ndarray, tolerance: float) -> float:
    """The weight rule written out: the best mean score, ties to the weight nearest 1/2, 1/2 unless beaten by more
    than `tolerance`."""
    means = rows.mean(axis=0)
    half = WEIGHT_GRID.index(0.5)
    best = max(range(len(WEIGHT_GRID)), key=lambda i: (round(float(means[i]), 12), -abs(WEIGHT_GRID[i] - 0.5)))
    return WEIGHT_GRID[best] if means[best] - means[half] > tolerance else 0.5


def test_out_of_fold_scores_equal_an_explicit_loop_over_held_out_queries():
    rng = np.random.default_rng(3)
    q = 90
    scores = rng.random((q, len(WEIGHT_GRID))) + np.linspace(0, 0.3, len(WEIGHT_GRID)) * (rng.random((q, 1)) > 0.4)
    categories = [("shoes", "bags", "hats")[i % 3] for i in range(q)]
    groups = [f"scene{i // 3}" for i in range(q)]            # three queries a scene, one of each category
    got = out_of_fold_scores(scores, categories, groups, tolerance=0.02, min_queries=10, folds=4, repeats=3)
    per_repeat = []
    for repeat in range(3):
        total = 0.0
        for i in range(q):
            train = [j for j in range(q) if fold_of(groups[j], repeat, 4) != fold_of(groups[i], repeat, 4)]
            overall = _explicit_pick(scores[train], 0.02)
            own = [j for j in train if categories[j] == categories[i]]
            w = _explicit_pick(scores[own], 0.02) if len(own) >= 10 else overall
            total += scores[i, WEIGHT_GRID.index(w)]
        per_repeat.append(total / q)
    assert got["fitted"] == pytest.approx(np.mean(per_repeat), abs=1e-12)
    assert got["fitted_spread"] == pytest.approx(np.std(per_repeat), abs=1e-12)
    assert got["paper"] == pytest.approx(scores[:, WEIGHT_GRID.index(0.5)].mean(), abs=1e-12)
    assert got["fitted_minus_paper"] == pytest.approx(got["fitted"] - got["paper"], abs=1e-12)


def test_a_scenes_queries_are_never_fitted_and_scored_in_the_same_fold():
    # Every "hats" query is in one scene and scores w = 1 far above the rest; the other categories are flat. Fitted
    # in-sample, hats would take w = 1; out of fold its scene is held out whole, so hats falls back to the other
    # scenes' overall weight (1/2) and scores exactly what 1/2 does.
    q = 60
    scores = np.full((q, len(WEIGHT_GRID)), 0.5)
    categories = ["hats" if i < 20 else ("shoes" if i % 2 else "bags") for i in range(q)]
    groups = ["the hat scene" if i < 20 else f"scene{i}" for i in range(q)]
    scores[:20, -1] = 2.0
    got = out_of_fold_scores(scores, categories, groups, min_queries=5)
    assert got["fitted"] == pytest.approx(got["paper"], abs=1e-12) and not got["fitted_ahead"]
    split_by_query = out_of_fold_scores(scores, categories, [str(i) for i in range(q)], min_queries=5)
    assert split_by_query["fitted"] > split_by_query["paper"]   # the same data with each query its own group


def test_the_fit_reports_its_out_of_fold_check_and_it_changes_no_weight(setup):
    emb, _, queries = setup
    queries = [Query(q.pair_index, f"s{i // 2}", q.product_id, q.category, q.fitb_negatives, q.rank_negatives)
               for i, q in enumerate(queries)]                # two queries a scene
    d_g, d_l = fake_matrices(queries, emb, {"shoes": "local", "bags": "global"})
    fit = fit_local_weights(d_g, d_l, queries, emb, min_queries=2)
    check = fit["out_of_fold"]
    assert check["fitted_ahead"] and check["fitted"] > check["paper"]   # the evidence is real: it holds out of fold
    assert (check["folds"], check["repeats"], check["grouped_by"]) == (5, 5, "scene")
    assert fit["weights"]["shoes"] > 0.5 > fit["weights"]["bags"]      # the same weights as without the check
    assert [fold_of("s1", r, 5) for r in range(5)] == [fold_of("s1", r, 5) for r in range(5)]
    assert all(0 <= fold_of(f"s{i}", 0, 5) < 5 for i in range(50))
