"""The classifier's calibration job: the cohort it draws, and its normalised Platt against an explicit loop."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jobs.training.calibrate import cohort_from, fit_calibrations
from pipeline.calibration import Cohort, fit_platt
from pipeline.distances import hybrid_distance
from pipeline.evaluation import Query, QueryEmbeddings


def synthetic(seed=0, per_category=(60, 45), q=12, d=8, regions=9):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    names = ["hats", "bags"]
    category = {f"{names[c]}-{i}": names[c] for c, n in enumerate(per_category) for i in range(n)}
    pids = sorted(category)
    emb = QueryEmbeddings(unit(q, d), unit(q, regions, d), torch.zeros(q, 4), {p: i for i, p in enumerate(pids)},
                          unit(len(pids), d), torch.zeros(len(pids), 4))
    rng = np.random.default_rng(seed)
    queries = []
    for k in range(q):
        pool = [p for p in pids if category[p] == names[k % 2]]
        chosen = [pool[i] for i in rng.permutation(len(pool))[:25]]
        queries.append(Query(k, f"s{k}", chosen[0], names[k % 2], tuple(chosen[1:4]), tuple(chosen[1:])))
        # the positive near its scene (some more than others), so the distance carries the label
        row = emb.product_index[chosen[0]]
        emb.product_emb[row] = F.normalize(emb.scene_global[k] + (0.5 + k / q) * emb.product_emb[row], dim=-1)
    cats = {n: unit(d) for n in names}
    return emb, category, queries, cats


def test_the_cohort_is_drawn_from_products_outside_the_held_out_scenes_with_their_embeddings():
    emb, category, _, _ = synthetic()
    held_out = {p for p in category if p.endswith(("-1", "-2", "-3"))}
    cohort, why = cohort_from(emb, category, held_out, size=32, seed=4, min_size=10)
    assert cohort.categories == ["bags", "hats"] and "32" in why
    for name in cohort.categories:
        ids = cohort.product_ids[name]
        assert len(ids) == 32 and not set(ids) & held_out and all(category[p] == name for p in ids)
        assert np.array_equal(cohort.vectors[name], emb.product_emb[[emb.product_index[p] for p in ids]].numpy())
    assert cohort_from(emb, category, held_out, size=32, seed=4, min_size=10)[0].product_ids == cohort.product_ids
    # 45 - 3 held out = 42 bags: below a minimum of 43, no cohort at all, and the reason names the category.
    none, why = cohort_from(emb, category, held_out, size=32, seed=4, min_size=43)
    assert none is None and "['bags']" in why


def test_a_cohort_calibration_is_platt_on_each_scenes_explicitly_normalised_distances():
    emb, category, queries, cats = synthetic(seed=1)
    cohort, _ = cohort_from(emb, category, set(), size=16, seed=2, min_size=10)
    got = fit_calibrations(queries, emb, cats.__getitem__, checkpoint_sha256="x", cohort=cohort)
    z, y, w = [], [], []
    for k, query in enumerate(queries):
        e_c = cats[query.category].reshape(1, 1, -1)
        f_s, f_i = emb.scene_global[k:k + 1], emb.scene_regions[k:k + 1]
        def dist(v, f_s=f_s, f_i=f_i, e_c=e_c):
            return float(hybrid_distance(f_s, f_i, v.reshape(1, 1, -1), e_c))
        ref = np.array([dist(torch.from_numpy(v)) for v in cohort.vectors[query.category]])
        candidates = (query.product_id, *query.rank_negatives)
        for j, pid in enumerate(candidates):
            z.append((dist(emb.product_emb[emb.product_index[pid]]) - ref.mean()) / ref.std())
            y.append(1.0 if j == 0 else 0.0)
            w.append(1.0 if j == 0 else 1.0 / (len(candidates) - 1))
    want = fit_platt(np.array(z), np.array(y), np.array(w))
    assert (got.methods["hybrid"].a, got.methods["hybrid"].b) == pytest.approx((want.a, want.b), rel=1e-4, abs=1e-6)
    assert got.cohort is cohort and "cohort-normalised" in got.info["calibration"]
    plain = fit_calibrations(queries, emb, cats.__getitem__, checkpoint_sha256="x")
    assert plain.cohort is None and plain.methods["hybrid"] != got.methods["hybrid"]
    assert isinstance(cohort, Cohort)
