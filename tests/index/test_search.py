"""Low-level search: brute force, exact re-rank and FAISS indexes checked against numpy inner products."""
import faiss
import numpy as np
import pytest

from index.search import bitmap_selector, exact_search, filtered_search, list_counts, rerank, search
from index.select import recall_at_k
from tests.catalogue_vectors import clustered


def brute_force(xq, xb, k):
    S = xq @ xb.T
    neighbours = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, neighbours, axis=1), neighbours


def test_exact_search_equals_numpy_across_blocks():
    xb, _ = clustered(1000, 16, seed=1)
    xq = xb[:7] + 0.01
    k = 10
    D, neighbours = exact_search(xq, xb, k, block=128)
    Dref, Iref = brute_force(xq, xb, k)
    np.testing.assert_array_equal(neighbours, Iref)
    np.testing.assert_allclose(D, Dref, rtol=1e-5)


def test_exact_search_pads_when_fewer_rows_than_k():
    xb, _ = clustered(5, 8)
    rows = np.array([10, 20, 30, 40, 50])
    D, neighbours = exact_search(xb[:2], xb, 8, rows)
    assert (neighbours[:, :5] >= 10).all() and (neighbours[:, 5:] == -1).all() and np.isneginf(D[:, 5:]).all()


def test_flat_index_equals_brute_force():
    xb, _ = clustered(2000, 32)
    xq = xb[::100] * 0.9 + 0.1 * clustered(20, 32, seed=3)[0]
    k = 20
    index = faiss.IndexFlatIP(32)
    index.add(xb)
    D, neighbours = search(index, xq, k, {})
    Dref, Iref = brute_force(xq, xb, k)
    np.testing.assert_array_equal(neighbours, Iref)
    np.testing.assert_allclose(D, Dref, rtol=1e-5)


def test_ivf_recall_floor_against_exact():
    xb, _ = clustered(4000, 32)
    rs = np.random.RandomState(5)
    xq = xb[rs.choice(len(xb), 100)] + rs.randn(100, 32).astype(np.float32) * 0.05
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    k = 20
    index = faiss.index_factory(32, "IVF32,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add(xb)
    _, Iref = brute_force(xq, xb, k)
    _, neighbours = search(index, xq, k, {"nprobe": 8})
    assert recall_at_k(neighbours, Iref, k) >= 0.95
    _, I_all = search(index, xq, k, {"nprobe": 32})          # every list probed: exact
    assert recall_at_k(I_all, Iref, k) == 1.0


def test_rerank_orders_candidates_by_exact_score():
    xb, _ = clustered(500, 16)
    xq = xb[:3]
    candidates = np.array([[5, 0, 7, -1], [1, 2, 3, 4], [-1, -1, 2, 0]])
    D, neighbours = rerank(xq, candidates, xb.astype(np.float16), 3)
    for q in range(3):
        valid = candidates[q][candidates[q] >= 0]
        expect = valid[np.argsort(-(xb[valid] @ xq[q]), kind="stable")][:3]
        np.testing.assert_array_equal(neighbours[q, :len(expect)], expect)
    assert neighbours[2, 2] == -1 and np.isneginf(D[2, 2])


def test_filtered_ivf_search_returns_only_selected_rows():
    xb, labels = clustered(3000, 16, n_clusters=20)
    xq = clustered(30, 16, seed=9)[0]
    k = 10
    index = faiss.index_factory(16, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add(xb)
    codes = (labels % 3).astype(np.int64)
    rows = np.flatnonzero(codes == 1)
    sel, _bits = bitmap_selector(rows, len(xb))
    per_list = list_counts(index, codes, 3)[:, 1]
    assert per_list.sum() == len(rows)
    D, neighbours = filtered_search(index, xq, k, {"nprobe": 16}, sel=sel, per_list=per_list)
    assert np.isin(neighbours, rows).all()
    _, Iref = exact_search(xq, xb[rows], k, rows)
    np.testing.assert_array_equal(neighbours, Iref)                    # all lists probed: exact


def test_filtered_search_refuses_index_without_selector_support():
    index = faiss.IndexLSH(8, 16)
    index.add(np.random.RandomState(0).rand(10, 8).astype(np.float32))
    with pytest.raises(ValueError, match="cannot filter"):
        filtered_search(index, np.zeros((1, 8), np.float32), 3, {}, sel=bitmap_selector(np.arange(3), 10)[0])


def test_filtered_ivf_search_with_a_shortlist_still_finds_rare_rows():
    # 512 lists: the shortlist (256 nearest lists) misses the lists of a rare, far-away category
    xb, labels = clustered(20_000, 16, n_clusters=200, spread=0.2)
    index = faiss.index_factory(16, "IVF512,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add(xb)
    codes = (labels == 7).astype(np.int64)                  # one cluster, ~100 rows
    rows = np.flatnonzero(codes == 1)
    sel, _bits = bitmap_selector(rows, len(xb))
    per_list = list_counts(index, codes, 2)[:, 1]
    xq = xb[labels != 7][:20]
    D, neighbours = filtered_search(index, xq, 10, {"nprobe": 4}, sel=sel, per_list=per_list)
    assert np.isin(neighbours, rows).all() and (neighbours >= 0).all()
    _, Iref = exact_search(xq, xb[rows], 10, rows)
    assert recall_at_k(neighbours, Iref, 10) >= 0.9
