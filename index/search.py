"""Low-level inner-product search: per-call FAISS parameters, row filters, exact re-rank, brute force."""
from __future__ import annotations

import faiss
import numpy as np

PAD_SCORE = -np.inf
# Below this many queries, exact search runs single-threaded SIMD (as FAISS itself skips BLAS below 20).
# FAISS's IndexFlat opens an OpenMP region even for one query; on a small machine shared with other
# work, its barrier waits for a descheduled thread: measured 22-28 ms instead of 0.2-3 ms per query.
SMALL_BATCH = 20


def index_kind(index: faiss.Index) -> str:
    """'flat' (IndexFlat), 'ivf' (any IVF, pre-transformed or not), 'hnsw' or 'other'."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    try:
        faiss.extract_index_ivf(index)
        return "ivf"
    except RuntimeError:
        pass
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return "other"


def ivf_of(index: faiss.Index):
    """The IndexIVF inside `index` (downcast), or None."""
    try:
        return faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return None


def supports_selector(index: faiss.Index) -> bool:
    """Whether FAISS can filter this index type with an IDSelector (IndexPQ / LSH cannot)."""
    return index_kind(index) in ("flat", "ivf", "hnsw")


def make_params(index: faiss.Index, params: dict, *, k: int, sel=None):
    """A SearchParameters object for one call (thread-safe: nothing is set on the index)."""
    kind = index_kind(index)
    if kind == "ivf":
        p = faiss.SearchParametersIVF()
        if "nprobe" in params:
            p.nprobe = int(min(params["nprobe"], ivf_of(index).nlist))
        else:
            p.nprobe = ivf_of(index).nprobe
    elif kind == "hnsw":
        p = faiss.SearchParametersHNSW()
        p.efSearch = int(max(k, params.get("efSearch", faiss.downcast_index(index).hnsw.efSearch)))
    elif sel is not None:
        p = faiss.SearchParameters()
    else:
        return None
    if sel is not None:
        p.sel = sel
    return p


def pad_fix(D: np.ndarray, neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give every -1 slot the score -inf (FAISS uses -FLT_MAX for inner product)."""
    D = np.asarray(D, dtype=np.float32)
    D[neighbours < 0] = PAD_SCORE
    return D, neighbours


def topk_from_scores(S: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of a score matrix (descending), padded with (-inf, -1); columns map through `rows`."""
    nq, nb = S.shape
    D = np.full((nq, k), PAD_SCORE, dtype=np.float32)
    neighbours = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, nb)
    if kk == 0:
        return D, neighbours
    part = np.argpartition(-S, kk - 1, axis=1)[:, :kk] if kk < nb else np.tile(np.arange(nb), (nq, 1))
    each = np.arange(nq)[:, None]      # plain indexing: take_along_axis's index building cost ~10 us a call
    top = S[each, part]
    order = np.argsort(-top, axis=1, kind="stable")
    cols = part[each, order]
    D[:, :kk] = top[each, order]
    neighbours[:, :kk] = cols if rows is None else np.asarray(rows, dtype=np.int64)[cols]
    return D, neighbours


def exact_search(xq: np.ndarray, xb: np.ndarray, k: int, rows: np.ndarray | None = None,
                 block: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner product of xq against xb (any float dtype; computed in float32 by blocks)."""
    rows = np.arange(len(xb), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    D, neighbours = topk_from_scores(np.empty((len(xq), 0), np.float32), k)
    for start in range(0, len(xb), block):
        xb_blk = np.asarray(xb[start:start + block], dtype=np.float32)
        Db, Ib = topk_from_scores(xq @ xb_blk.T, k, rows[start:start + block])
        if start == 0:
            D, neighbours = Db, Ib
            continue
        Dm, cols = topk_from_scores(np.hstack([D, Db]), k)
        D, neighbours = Dm, np.take_along_axis(np.hstack([neighbours, Ib]), cols, axis=1)
    return D, neighbours


def flat_view(index: faiss.Index) -> np.ndarray | None:
    """Zero-copy (ntotal, d) float32 view of an IndexFlat's vectors (memory-mapped ones too), else None."""
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexFlat) or index.ntotal == 0:
        return None
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def small_batch_scores(xq: np.ndarray, xb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """nq x nb inner products of float32 xq (fewer than SMALL_BATCH rows) and xb by single-threaded SIMD, into
    `out` (a C-contiguous float32 nq x nb view) when given."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    (nq, d), nb = xq.shape, len(xb)
    S = np.empty((nq, nb), dtype=np.float32) if out is None else out
    for i in range(nq):
        faiss.fvec_inner_products_ny(faiss.swig_ptr(S[i]), faiss.swig_ptr(xq[i]), faiss.swig_ptr(xb), d, nb)
    return S


def knn_ip(xq: np.ndarray, xb: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of xq over float32 xb (`rows` maps positions to ids), (-inf, -1) padded."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    nq, nb = len(xq), len(xb)
    if nq < SMALL_BATCH:
        return topk_from_scores(small_batch_scores(xq, xb), k, rows)
    kk = min(k, nb)
    D = np.full((nq, k), PAD_SCORE, dtype=np.float32)
    neighbours = np.full((nq, k), -1, dtype=np.int64)
    if kk:
        D[:, :kk], local = faiss.knn(xq, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
        neighbours[:, :kk] = local if rows is None else np.where(local >= 0, np.asarray(rows)[np.maximum(local, 0)], -1)
    return pad_fix(D, neighbours)


def rerank(xq: np.ndarray, neighbours: np.ndarray, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidates (rows of `embeddings`), best k kept."""
    nq, kc = neighbours.shape
    valid = neighbours >= 0
    xb = np.asarray(embeddings[np.where(valid, neighbours, 0).ravel()], dtype=np.float32).reshape(nq, kc, -1)
    S = np.einsum("qd,qcd->qc", xq, xb)
    S[~valid] = PAD_SCORE
    D, cols = topk_from_scores(S, k)
    I_out = np.where(cols >= 0, np.take_along_axis(neighbours, np.maximum(cols, 0), axis=1), -1)
    D[I_out < 0] = PAD_SCORE
    return D, I_out


def search(index: faiss.Index, xq: np.ndarray, k: int, params: dict, *, embeddings=None, sel=None,
           assign: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search with per-call parameters; re-rank k*rerank_factor candidates exactly when asked.

    `assign` = (Iq, Dq) forces the IVF lists probed per query (used for category-aware probing).
    """
    factor = int(params.get("rerank_factor", 0) or 0)
    use_rerank = factor > 1 and embeddings is not None
    kc = min(index.ntotal, k * factor) if use_rerank else k
    kc = max(kc, 1)
    p = make_params(index, params, k=kc, sel=sel)
    if sel is None and assign is None and len(xq) < SMALL_BATCH and (view := flat_view(index)) is not None:
        D, neighbours = knn_ip(xq, view, kc)
    elif assign is not None:
        D, neighbours = _search_preassigned(index, xq, kc, assign, p)
    elif p is None:
        D, neighbours = index.search(xq, kc)
    else:
        D, neighbours = index.search(xq, kc, params=p)
    if use_rerank:
        D, neighbours = rerank(xq, neighbours, embeddings, k)
    if neighbours.shape[1] < k:
        D = np.hstack([D, np.full((len(xq), k - neighbours.shape[1]), PAD_SCORE, np.float32)])
        neighbours = np.hstack([neighbours, np.full((len(xq), k - neighbours.shape[1]), -1, np.int64)])
    return pad_fix(D, neighbours)


def bitmap_selector(rows: np.ndarray, n: int):
    """(IDSelectorBitmap over `rows` of an n-row index, its bit array): keep the array alive with the selector."""
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(bits), bits


def list_counts(index: faiss.Index, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """(nlist, n_codes): how many rows of each code (e.g. category) each inverted list holds."""
    ivf = ivf_of(index)
    counts = np.zeros((ivf.nlist, n_codes), dtype=np.int64)
    for lst in range(ivf.nlist):
        size = ivf.invlists.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size)
            counts[lst] = np.bincount(codes[ids], minlength=n_codes)
    return counts


def filtered_search(index: faiss.Index, xq: np.ndarray, k: int, params: dict, *, sel,
                    embeddings=None, per_list: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search only the rows `sel` accepts, in the index's own (approximate) order.

    IVF: category-aware probing; among lists ordered by distance to the query, probe the first nprobe
    that hold any selected row (more if they hold fewer than the candidates needed), `per_list` being
    the selected-row count of each list. HNSW: graph search that only returns selected rows. Flat: exact.
    """
    kind = index_kind(index)
    if kind == "flat":
        return search(index, xq, k, {}, sel=sel)
    if kind == "hnsw":
        return search(index, xq, k, params, embeddings=embeddings, sel=sel)
    if kind != "ivf":
        raise ValueError(f"FAISS cannot filter a {type(faiss.downcast_index(index)).__name__}; "
                         "search the rows exactly instead")
    ivf = ivf_of(index)
    nprobe = int(params.get("nprobe", ivf.nprobe))
    factor = int(params.get("rerank_factor", 0) or 0)
    want = k * factor if factor > 1 else k
    xt = apply_pretransform(index, xq)
    # rank a shortlist of lists first; queries whose shortlist cannot satisfy the rule rank them all
    shortlist = min(ivf.nlist, max(256, 16 * nprobe))
    centroids = flat_view(ivf.quantizer)

    def coarse(x, n):
        return knn_ip(x, centroids, n) if centroids is not None else ivf.quantizer.search(x, n)

    Dq, Iq = coarse(xt, shortlist)
    lists, dis, done = _probe_lists(Dq, Iq, per_list, nprobe, want)
    if shortlist < ivf.nlist and not done.all():
        redo = np.flatnonzero(~done)
        Dq_all, Iq_all = coarse(xt[redo], ivf.nlist)
        lists_r, dis_r, _ = _probe_lists(Dq_all, Iq_all, per_list, nprobe, want)
        width = max(lists.shape[1], lists_r.shape[1])
        lists, dis = _widen(lists, dis, width)
        lists_r, dis_r = _widen(lists_r, dis_r, width)
        lists[redo], dis[redo] = lists_r, dis_r
    return search(index, xq, k, params, embeddings=embeddings, sel=sel, assign=(lists, dis))


def _probe_lists(Dq, Iq, per_list, nprobe: int, want: int):
    """Per query, the lists (in quantizer order) to probe: the first `nprobe` holding selected rows, then
    more until they hold `want` selected rows. Returns (lists padded with -1, distances, complete?)."""
    counts = np.where(Iq >= 0, per_list[np.maximum(Iq, 0)], 0)
    has = counts > 0
    before = np.cumsum(counts, axis=1) - counts
    take = has & ((np.cumsum(has, axis=1) <= nprobe) | (before < want))
    done = (has.sum(axis=1) >= nprobe) & (counts.sum(axis=1) >= want)
    width = max(1, int(take.sum(axis=1).max()))
    order = np.argsort(~take, axis=1, kind="stable")[:, :width]
    lists = np.where(np.take_along_axis(take, order, axis=1), np.take_along_axis(Iq, order, axis=1), -1)
    return lists.astype(np.int64), np.take_along_axis(Dq, order, axis=1), done


def _widen(lists, dis, width):
    pad = width - lists.shape[1]
    if pad <= 0:
        return lists, dis
    return (np.hstack([lists, np.full((len(lists), pad), -1, np.int64)]),
            np.hstack([dis, np.zeros((len(dis), pad), np.float32)]))


def apply_pretransform(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """Run the vector transforms (e.g. OPQ rotation) of an IndexPreTransform on x."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            x = faiss.downcast_VectorTransform(index.chain.at(i)).apply(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def _search_preassigned(index, xq, k, assign, p):
    # the Python wrapper of search_preassigned refuses params, so call the C++ method directly
    ivf = ivf_of(index)
    Iq = np.ascontiguousarray(assign[0], dtype=np.int64)
    Dq = np.ascontiguousarray(assign[1], dtype=np.float32)
    xt = apply_pretransform(index, xq)
    if p is None:
        p = faiss.SearchParametersIVF()
    p.nprobe = Iq.shape[1]             # C++ reads the width of the assignment from params.nprobe
    n = len(xt)
    D = np.empty((n, k), dtype=np.float32)
    neighbours = np.empty((n, k), dtype=np.int64)
    ivf.search_preassigned_c(n, faiss.swig_ptr(xt), k, faiss.swig_ptr(Iq), faiss.swig_ptr(Dq),
                             faiss.swig_ptr(D), faiss.swig_ptr(neighbours), False, p)
    return D, neighbours
