"""ProductIndex: exact Flat search, category filtering on every index type, mmap loading, checkpoint guard."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from index.build import build_index
from index.layout import current_version
from index.select import recall_at_k
from index.store import CheckpointMismatchError, IndexDirError, ProductIndex
from tests.catalogue_vectors import CATEGORIES, clustered, write_embeddings

FAST = {"n_eval_queries": 100, "n_tune_queries": 60}
N, D_DIM = 3000, 32


def brute_force(xq, xb, k, rows=None):
    rows = np.arange(len(xb)) if rows is None else rows
    S = xq @ xb[rows].T
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, order, axis=1), rows[order]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("cat")
    xb, labels = clustered(N, D_DIM, n_clusters=40)
    cats = np.array([CATEGORIES[c % len(CATEGORIES)] for c in labels])
    rs = np.random.RandomState(7)
    xq = xb[rs.choice(N, 40)] + rs.randn(40, D_DIM).astype(np.float32) * (0.6 / np.sqrt(D_DIM))
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return write_embeddings(root / "emb", xb, cats), xb, cats, xq


@pytest.fixture(scope="module")
def built(catalogue, tmp_path_factory):
    """factory -> index dir, built once per module."""
    emb_dir = catalogue[0]
    cache = {}

    def get(factory):
        if factory not in cache:
            out = tmp_path_factory.mktemp("idx")
            build_index(emb_dir, out, factory=factory, **FAST)
            cache[factory] = out
        return cache[factory]
    return get


def test_flat_search_equals_brute_force(catalogue, built):
    _, xb, _, xq = catalogue
    k = 20
    index = ProductIndex.load(built("Flat"))
    D, neighbours = index.search(xq, k)
    Dref, Iref = brute_force(xq, xb, k)
    np.testing.assert_array_equal(neighbours, Iref)
    np.testing.assert_allclose(D, Dref, rtol=1e-5, atol=1e-6)
    D1, I1 = index.search(xq[0], k)                        # one query as a 1-d vector
    np.testing.assert_array_equal(I1[0], Iref[0])


@pytest.mark.parametrize("category", CATEGORIES)
def test_flat_category_search_equals_exact_per_category(catalogue, built, category):
    _, xb, cats, xq = catalogue
    k = 15
    index = ProductIndex.load(built("Flat"))
    rows = np.flatnonzero(cats == category)
    np.testing.assert_array_equal(index.rows_for_category(category), rows)
    D, neighbours = index.search(xq, k, category=category)
    Dref, Iref = brute_force(xq, xb, k, rows)
    assert np.isin(neighbours, rows).all()
    np.testing.assert_array_equal(neighbours, Iref)
    np.testing.assert_allclose(D, Dref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory, floor", [("IVF32,Flat", 0.95), ("HNSW16,Flat", 0.95), ("IVF16,PQ8x4", 0.9)])
def test_approximate_category_search_is_close_to_exact(catalogue, built, factory, floor):
    _, xb, cats, xq = catalogue
    k = 20
    index = ProductIndex.load(built(factory))
    _, Iref_all = brute_force(xq, xb, k)
    _, I_all = index.search(xq, k)
    assert recall_at_k(I_all, Iref_all, k) >= floor
    for exact_up_to in (0, N):              # 0: FAISS selector path, N: exact over the category's rows
        index.exact_category_max_rows = exact_up_to
        for category in CATEGORIES:
            rows = np.flatnonzero(cats == category)
            D, neighbours = index.search(xq, k, category=category)
            assert np.isin(neighbours, rows).all() and (neighbours >= 0).all()
            assert (np.diff(D, axis=1) <= 1e-6).all()      # best first
            _, Iref = brute_force(xq, xb, k, rows)
            assert recall_at_k(neighbours, Iref, k) >= floor, (factory, exact_up_to, category)


def own_scores(xq3, xb, cats, categories):
    """nq x N: each row scored by its own category's query (xq3: nq x K x d), -inf outside the categories."""
    S = np.full((len(xq3), len(xb)), -np.inf)
    for r in range(len(xb)):
        if cats[r] in categories:
            S[:, r] = xq3[:, categories.index(cats[r])].astype(np.float64) @ xb[r].astype(np.float64)
    return S


def per_category_oracle(xq3, xb, cats, categories, k):
    """The k best rows by own_scores, an explicit sort (ties by row), -1 past the categories' rows."""
    S = own_scores(xq3, xb, cats, categories)
    order = np.lexsort((np.broadcast_to(np.arange(len(xb)), S.shape), -S), axis=1)[:, :k]
    scores = np.take_along_axis(S, order, 1)
    rows = np.where(np.isfinite(scores), order, -1)
    pad = k - rows.shape[1]
    return np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf), np.pad(rows, ((0, 0), (0, pad)),
                                                                               constant_values=-1)


@pytest.mark.parametrize("nq", [1, 3, 25])         # 25: the BLAS path, above SMALL_BATCH
@pytest.mark.parametrize("cache_bytes", [256 * 2**20, 0])   # 0: every category searched on its own, then merged
def test_flat_search_categories_equals_the_explicit_per_category_scoring(catalogue, built, nq, cache_bytes):
    _, xb, cats, _ = catalogue
    categories = [CATEGORIES[3], CATEGORIES[0], CATEGORIES[1]]
    xq3 = np.random.RandomState(nq).randn(nq, len(categories), D_DIM).astype(np.float32) * 0.7
    index = ProductIndex.load(built("Flat"))
    index.exact_cache_bytes = cache_bytes
    for k in (1, 17, 2 * N):                         # 2N: every row of the three categories, then padding
        D, neighbours = index.search_categories(xq3, k, categories)
        Dref, Iref = per_category_oracle(xq3, xb, cats, categories, k)
        assert neighbours.shape == (nq, k)
        np.testing.assert_array_equal(neighbours < 0, Iref < 0)          # the same padding
        np.testing.assert_allclose(D, Dref, rtol=1e-5, atol=1e-5)        # the same scores in the same order
        S = own_scores(xq3, xb, cats, categories)                        # each row's own score: ties may swap
        found = np.where(neighbours >= 0, np.take_along_axis(S, np.maximum(neighbours, 0), 1), -np.inf)
        np.testing.assert_allclose(found, Dref, rtol=1e-5, atol=1e-5)
        assert (np.sort(neighbours, axis=1) == np.sort(Iref, axis=1)).mean() > 0.999
    assert (index._exact_cache_used > 0) == (cache_bytes > 0)


@pytest.mark.parametrize("factory", ["IVF32,Flat", "HNSW16,Flat"])
def test_approximate_search_categories_is_close_to_the_explicit_scoring(catalogue, built, factory):
    _, xb, cats, _ = catalogue
    categories = list(CATEGORIES[:2])
    xq3 = np.stack([xb[:10], xb[100:110]], axis=1)       # each category's query: a catalogue vector
    index = ProductIndex.load(built(factory))
    D, neighbours = index.search_categories(xq3, 20, categories)
    _, Iref = per_category_oracle(xq3, xb, cats, categories, 20)
    assert np.isin(neighbours, np.flatnonzero(np.isin(cats, categories))).all()
    assert (np.diff(D, axis=1) <= 1e-6).all()
    assert recall_at_k(neighbours, Iref, 20) >= 0.9


def test_search_categories_refuses_queries_of_another_shape(built):
    index = ProductIndex.load(built("Flat"))
    with pytest.raises(ValueError, match=r"queries must have shape \(nq, 2, 32\)"):
        index.search_categories(np.zeros((1, 3, D_DIM), np.float32), 5, CATEGORIES[:2])
    with pytest.raises(ValueError, match="unknown category 'hats'"):
        index.search_categories(np.zeros((1, 1, D_DIM), np.float32), 5, ["hats"])


def test_category_search_pads_when_category_is_small(tmp_path):
    xb, _ = clustered(200, 8)
    cats = np.array(["big"] * 197 + ["tiny"] * 3)
    build_index(write_embeddings(tmp_path / "emb", xb, cats), tmp_path / "idx", **FAST)
    index = ProductIndex.load(tmp_path / "idx")
    D, neighbours = index.search(xb[:2], 5, category="tiny")
    assert (neighbours[:, :3] >= 197).all() and (neighbours[:, 3:] == -1).all() and np.isneginf(D[:, 3:]).all()


def test_unknown_category_lists_the_known_ones(built):
    index = ProductIndex.load(built("Flat"))
    with pytest.raises(ValueError, match="unknown category 'hats'; known: bags, bottoms, lamps, shoes, tops"):
        index.search(np.zeros((1, D_DIM), np.float32), 5, category="hats")
    with pytest.raises(ValueError, match="unknown category"):
        index.rows_for_category("hats")


def test_bad_queries_and_k_raise(built):
    index = ProductIndex.load(built("Flat"))
    with pytest.raises(ValueError, match=r"shape \(nq, 32\)"):
        index.search(np.zeros((2, 31), np.float32), 5)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.zeros((1, D_DIM), np.float32), 0)


def test_metadata_accessors(catalogue, built):
    _, xb, cats, _ = catalogue
    index = ProductIndex.load(built("Flat"))
    assert index.categories == sorted(CATEGORIES) and index.n == N and index.dim == D_DIM
    assert index.product_ids[5] == "p000005"
    rows = [3, 1, 2999]
    x = index.embeddings(rows)
    assert x.dtype == np.float32 and x.shape == (3, D_DIM)
    np.testing.assert_allclose(x, xb[rows], atol=1e-3)
    stored = index.stored_embeddings(rows)           # as on disk: the float32 copy is exactly its cast
    assert stored.dtype == np.float16 and np.array_equal(stored.astype(np.float32), x)
    assert index.table.column("category").to_pylist() == list(cats)
    assert index.info.factory == "Flat"
    with pytest.raises(ValueError, match="rows must lie in"):
        index.embeddings([N])
    with pytest.raises(ValueError, match="rows must lie in"):
        index.stored_embeddings([-1])


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "HNSW16,Flat"])
def test_memory_mapped_load_matches_normal_load(catalogue, built, factory):
    xq = catalogue[3]
    mapped = ProductIndex.load(built(factory))
    loaded = ProductIndex.load(built(factory), mmap=False)
    assert mapped.mmap and not loaded.mmap
    D1, I1 = mapped.search(xq, 10)
    D2, I2 = loaded.search(xq, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


def test_require_checkpoint_names_both_hashes(built):
    index = ProductIndex.load(built("Flat"))
    index.require_checkpoint("a" * 64)
    with pytest.raises(CheckpointMismatchError, match=f"built from checkpoint sha256 {'a' * 64}.*{'c' * 64}"):
        index.require_checkpoint("c" * 64)


def test_missing_and_inconsistent_dirs_are_refused(tmp_path, catalogue, built):
    with pytest.raises(IndexDirError, match="does not exist"):
        ProductIndex.load(tmp_path / "nope")
    copy = tmp_path / "copy"
    shutil.copytree(built("Flat"), copy)
    build = copy / current_version(copy)
    np.save(build / "embeddings.f16.npy", np.zeros((5, D_DIM), np.float16))
    with pytest.raises(IndexDirError, match="inconsistent"):
        ProductIndex.load(copy)
    (build / "ids.arrow").unlink()
    with pytest.raises(IndexDirError, match="lacks ids.arrow"):
        ProductIndex.load(copy)


def test_a_flat_directory_of_the_older_layout_still_loads(tmp_path, catalogue, built):
    flat = tmp_path / "flat"
    shutil.copytree(built("Flat") / current_version(built("Flat")), flat)
    index = ProductIndex.load(flat)
    assert index.version is None and index.n == ProductIndex.load(built("Flat")).n


def test_the_index_package_does_not_import_torch():

    code = ("import sys, index.store, index.build, index.select, jobs.catalog.build_index; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "HNSW16,Flat", "IVF16,PQ8x4"])
def test_a_search_said_to_be_exact_is_the_brute_force_top_k(catalogue, built, factory):
    _, xb, cats, xq = catalogue
    k = 15
    index = ProductIndex.load(built(factory))
    stored = xb.astype(np.float16).astype(np.float32)        # a non-flat index brute-forces its float16 rows
    assert index.searches_exactly() == (factory == "Flat")   # over every row only a Flat index is exact
    for exact_up_to in (0, N):
        index.exact_category_max_rows = exact_up_to
        for category in CATEGORIES:
            exact = index.searches_exactly(category)
            assert exact == (factory == "Flat" or exact_up_to == N), (factory, exact_up_to, category)
            if exact:
                rows = np.flatnonzero(cats == category)
                D, neighbours = index.search(xq, k, category=category)
                Dref, Iref = brute_force(xq, xb if factory == "Flat" else stored, k, rows)
                assert recall_at_k(neighbours, Iref, k) == 1.0
                np.testing.assert_allclose(D, Dref, rtol=1e-5, atol=1e-5)
