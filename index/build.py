"""Build an index directory from embedding shards: select, train, add (one process or sharded), tune, write."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from common import defaults
from common.errors import InputError
from common.files import atomic_path
from index.embedding_shards import EmbeddingsError, Manifest, iter_embeddings, read_manifest, read_metadata
from index.layout import (
    EMBEDDINGS_FILE,
    FILES,
    FORMAT_VERSION,
    INDEX_FILE,
    IVFDATA_FILE,
    KEEP_VERSIONS,
    CategoryRecallReport,
    IndexInfo,
    IvfStats,
    LatencyReport,
    MemoryReport,
    RecallReport,
    SourceInfo,
    build_lock,
    new_version_dir,
    prune,
    publish,
)
from index.parallel import INDEX_ENGINES, make_map
from index.rows import write_row_metadata
from index.search import (
    apply_pretransform,
    bitmap_selector,
    exact_search,
    filtered_search,
    index_kind,
    ivf_of,
    list_counts,
    search,
)
from index.select import (
    IndexSpec,
    Tuning,
    candidate_params,
    format_bytes,
    parse_bytes,
    recall_at_k,
    select_index,
    spec_for_factory,
    tune_search_params,
)
from index.sharded import sharded_add, supports_sharded_add


class BuildError(InputError):
    """The index cannot be built as asked (budget too small, bad factory string, ...)."""


@dataclass(frozen=True)
class BuildParams:
    """How to build an index: what to choose, how far to tune it, how to add, how many builds to keep.

    `memory_budget_bytes` and `intent` drive the automatic choice (index.select) unless `factory` forces
    one; the search knobs are tuned to `target_recall` on `n_tune_queries` perturbed rows and the recall
    reported on `n_eval_queries` others (noise of norm ~`query_noise`). With `workers` > 1, `engine`
    "ray" or `ondisk`, an IVF index is filled by parallel workers and merged (index.sharded); `ondisk`
    keeps its inverted lists in index.ivfdata, memory-mapped when loaded.
    """

    memory_budget_bytes: int | str = defaults.MEMORY_BUDGET
    target_recall: float = defaults.TARGET_RECALL
    seed: int = defaults.SEED
    factory: str | None = None
    intent: str = defaults.INDEX_INTENT
    n_eval_queries: int = 1000
    n_tune_queries: int = 500
    query_noise: float = defaults.RECALL_QUERY_NOISE
    keep_versions: int = KEEP_VERSIONS
    workers: int = 1
    engine: str = "local"
    ray_address: str | None = None
    ondisk: bool = False

    def checked(self) -> BuildParams:
        """These parameters with the budget in bytes; BuildError naming the first one that is wrong."""
        if not 0.0 < self.target_recall <= 1.0:
            raise BuildError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.n_eval_queries < 1 or self.n_tune_queries < 1 or self.query_noise < 0:
            raise BuildError(f"need n_eval_queries >= 1, n_tune_queries >= 1 and query_noise >= 0, got "
                             f"{self.n_eval_queries}, {self.n_tune_queries}, {self.query_noise}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise BuildError(f"workers must be a positive integer, got {self.workers!r}")
        if self.engine not in INDEX_ENGINES:
            raise BuildError(f"engine must be one of {', '.join(INDEX_ENGINES)}, got {self.engine!r}")
        try:
            return dataclasses.replace(self, memory_budget_bytes=parse_bytes(self.memory_budget_bytes))
        except ValueError as e:
            raise BuildError(str(e)) from None

    @property
    def parallel_add(self) -> bool:
        return self.workers > 1 or self.engine == "ray" or self.ondisk


def build_index(embeddings_dir: str | Path, out_dir: str | Path, params: BuildParams | None = None, *,
                log: Callable[[str], None] | None = None, **overrides) -> IndexInfo:
    """Build a new version of the index directory `out_dir` and point readers at it; return its info.

    `params` (BuildParams; its fields may also be given as keywords, which override it) say how. The
    build goes into the next numbered folder (index.faiss, the row metadata, embeddings.f16.npy, then
    info.json); the pointer moves only once it is complete, and builds older than the newest
    `keep_versions` are pruned (see index.layout). Shards are streamed batch by batch.
    """
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    params = dataclasses.replace(params or BuildParams(), **overrides).checked()
    manifest = read_manifest(embeddings_dir)
    spec, index = _choose(manifest, params)
    say(f"{manifest.n} vectors, d={manifest.dim}: {spec.factory} ({spec.reason})")
    parallel = _parallel_plan(index, spec, params, say)
    root = Path(out_dir)
    _check_out_dir(root, Path(embeddings_dir))
    with build_lock(root):
        out = new_version_dir(root)
        info = _Build(out, manifest, spec, index, params, parallel, say, t_start, str(embeddings_dir)).run()
        publish(root, out)
        pruned = prune(root, params.keep_versions)
    say(f"wrote {out} in {info.build_seconds:.1f}s (index {format_bytes(info.memory.index_file_bytes)})"
        + (f"; pruned {', '.join(pruned)}" if pruned else ""))
    return info


def _choose(manifest: Manifest, params: BuildParams) -> tuple[IndexSpec, faiss.Index]:
    """The index to build (forced by `factory` or selected from size and budget) and its empty FAISS index."""
    n, d = manifest.n, manifest.dim
    try:
        spec = spec_for_factory(params.factory, n, d) if params.factory else select_index(
            n, d, memory_budget_bytes=params.memory_budget_bytes, intent=params.intent)
    except ValueError as e:
        raise BuildError(str(e)) from None
    try:
        return spec, faiss.index_factory(d, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise BuildError(f"FAISS cannot make an index from factory string {spec.factory!r} (d={d})") from None


def _parallel_plan(index: faiss.Index, spec: IndexSpec, params: BuildParams, say) -> dict | None:
    """How the vectors are added: None for one process, else workers, engine, Ray address and on-disk lists."""
    if not params.parallel_add:
        return None
    if not supports_sharded_add(index):
        if params.ondisk:
            raise BuildError(f"on-disk inverted lists need an IVF index; {spec.factory} has none",
                             hint="choose an IVF {option:factory} or a smaller {option:memory_budget}, "
                                  "or leave out {option:ondisk}")
        say(f"{spec.factory} is not an IVF index: adding in one process")
        return None
    return {"workers": params.workers, "engine": params.engine, "ray_address": params.ray_address,
            "ondisk": params.ondisk}


@dataclass
class _Prepared:
    """What the build reads once and every later phase uses."""

    emb: np.ndarray                 # the float16 embeddings (memory-mapped, being written)
    counts: dict[str, int]
    cat_names: list[str]
    cat_codes: np.ndarray
    xq: np.ndarray                  # tuning queries, then evaluation queries
    k: int


@dataclass
class _Build:
    """One build into the folder `out`: write the row files and float16 embeddings, train, add, tune, finish."""

    out: Path
    manifest: Manifest
    spec: IndexSpec
    index: faiss.Index
    params: BuildParams
    parallel: dict | None
    say: Callable[[str], None]
    t_start: float
    embeddings_dir: str
    phases: dict = field(default_factory=dict)

    def run(self) -> IndexInfo:
        """Fill the build folder and finish it with info.json (last: its presence marks the build complete)."""
        rng = np.random.default_rng(self.params.seed)
        with contextlib.ExitStack() as stack:
            emb_tmp = stack.enter_context(atomic_path(self.out / EMBEDDINGS_FILE))
            index_tmp = stack.enter_context(atomic_path(self.out / INDEX_FILE))
            data = self._prepare(emb_tmp, rng)
            I_ref = self._fill(data, rng)
            tuned = self._tune(data, I_ref)
            tuned["ivf"] = _ivf_stats(self.index, data.emb, rng)
            _set_index_params(self.index, tuned["params"])
            faiss.write_index(self.index, str(index_tmp))
        info = self._info(data, tuned)
        info.write(self.out)
        return info

    def _prepare(self, emb_tmp: Path, rng) -> _Prepared:
        t0 = time.perf_counter()
        n, p = self.manifest.n, self.params
        emb = _write_f16(self.manifest, emb_tmp)
        row_metadata = write_row_metadata(self.out, read_metadata(self.manifest))
        xq = _perturbed_queries(emb, p.n_tune_queries + p.n_eval_queries, p.query_noise, rng)
        self.phases["write_f16_ids_seconds"] = round(time.perf_counter() - t0, 3)
        return _Prepared(emb, row_metadata.counts(), list(row_metadata.categories), row_metadata.codes(), xq,
                         min(defaults.RECALL_K, n))

    def _fill(self, data: _Prepared, rng) -> np.ndarray:
        """Train, then add every row (here or by parallel workers); the exact top-k of the queries, found on the way."""
        t0 = time.perf_counter()
        _train(self.index, self.spec, data.emb, self.manifest.n, rng, self.params.seed)
        self.phases["train_seconds"] = round(time.perf_counter() - t0, 3)
        self.say(f"trained in {self.phases['train_seconds']:.1f}s; adding vectors")
        t0 = time.perf_counter()
        if self.parallel is None:
            I_ref = _add_and_ground_truth(self.index, self.manifest, data.xq, data.k)
            self.phases.update(add_seconds=round(time.perf_counter() - t0, 3), merge_seconds=0.0, groups=1)
            return I_ref
        I_ref, timings = _sharded_add(self.index, self.manifest, data.xq, data.k, self.out, self.parallel)
        self.phases.update(timings)
        self.say(f"added in {timings['groups']} groups by {self.parallel['engine']} workers in "
                 f"{timings['add_seconds']:.1f}s, merged in {timings['merge_seconds']:.1f}s"
                 + (" (inverted lists on disk)" if self.parallel["ondisk"] else ""))
        return I_ref

    def _tune(self, data: _Prepared, I_ref: np.ndarray) -> dict:
        """Search knobs reaching the target recall (tuned on one query set, measured on the other)."""
        t_tune = time.perf_counter()
        index, spec, emb, k, p = self.index, self.spec, data.emb, data.k, self.params
        xq_tune, xq_eval = data.xq[:p.n_tune_queries], data.xq[p.n_tune_queries:]
        I_tune, I_eval = I_ref[:p.n_tune_queries], I_ref[p.n_tune_queries:]

        def run(x, kk, params):
            return search(index, x, kk, params, embeddings=emb)[1]

        if spec.kind == "flat" or not candidate_params(spec, k=k):
            tuning = Tuning(dict(spec.search_params), 1.0, True, [])
        else:
            tuning = tune_search_params(run, spec, xq_tune, I_tune, k=k, target_recall=p.target_recall)
        params = tuning.search_params
        t0 = time.perf_counter()
        I_eval_found = run(xq_eval, k, params)
        batch_ms = (time.perf_counter() - t0) * 1e3 / max(1, len(xq_eval))
        recall = recall_at_k(I_eval_found, I_eval, k)
        single_ms = _single_query_ms(run, xq_eval[:100], k, params)
        self.say(f"{spec.factory} {params}: recall@{k}={recall:.4f} (target {p.target_recall}), "
                 f"{single_ms:.3f} ms/query")
        cat_params, cat_report = _tune_category_params(index, spec, emb, data.cat_names, data.cat_codes, params,
                                                       xq_tune, xq_eval[:500], k, p.target_recall)
        if cat_report:
            self.say(f"category search {cat_params}: recall@{k}={cat_report.value:.4f} "
                     f"on {', '.join(cat_report.categories)}")
        self.phases["tune_seconds"] = round(time.perf_counter() - t_tune, 3)
        return {"params": params, "tuning": tuning, "recall": recall, "queries": len(xq_eval),
                "single_ms": single_ms, "batch_ms": batch_ms, "cat_params": cat_params, "cat_report": cat_report}

    def _info(self, data: _Prepared, tuned: dict) -> IndexInfo:
        out, spec, p, params, recall = self.out, self.spec, self.params, tuned["params"], tuned["recall"]
        ivfdata = out / IVFDATA_FILE
        return IndexInfo(
            format_version=FORMAT_VERSION, checkpoint_sha256=self.manifest.checkpoint_sha256,
            backbone=self.manifest.backbone, dim=self.manifest.dim, metric="inner_product", factory=spec.factory,
            index_kind=spec.kind, search_params=params, category_search_params=tuned["cat_params"],
            rerank=int(params.get("rerank_factor", 0) or 0) > 1, n=self.manifest.n,
            counts_per_category=data.counts, extra_columns=list(self.manifest.extra_columns),
            build_seconds=round(time.perf_counter() - self.t_start, 3),
            recall=RecallReport(
                k=data.k, value=round(recall, 5), target=p.target_recall, target_met=bool(recall >= p.target_recall),
                queries=tuned["queries"], query_noise=p.query_noise,
                method="perturbed database rows (renormalised) vs exact inner-product top-k; "
                       "params tuned on a separate query set",
                tuning_recall=round(tuned["tuning"].recall, 5), tuning_trials=tuned["tuning"].trials),
            category_recall=tuned["cat_report"],
            latency_ms=LatencyReport(single_query_median=round(tuned["single_ms"], 4),
                                     batch_per_query=round(tuned["batch_ms"], 4), threads=faiss.omp_get_max_threads()),
            memory=MemoryReport(budget_bytes=int(p.memory_budget_bytes),
                                estimated_index_bytes=int(spec.estimated_bytes),
                                index_file_bytes=(out / INDEX_FILE).stat().st_size,
                                ivfdata_bytes=ivfdata.stat().st_size if ivfdata.exists() else 0,
                                embeddings_f16_bytes=(out / EMBEDDINGS_FILE).stat().st_size),
            ondisk=ivfdata.exists(), phases=self.phases,
            parallel=None if self.parallel is None else {k: v for k, v in self.parallel.items() if k != "ray_address"},
            ivf=tuned["ivf"],
            source=SourceInfo(embeddings_dir=self.embeddings_dir,
                              catalog_fingerprint=self.manifest.catalog_fingerprint),
            selection_reason=spec.reason, intent=p.intent if not p.factory else "forced", seed=p.seed,
            embeddings_dir=self.embeddings_dir, faiss_version=faiss.__version__,
            created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            files=list(FILES) + ([IVFDATA_FILE] if ivfdata.exists() else []), version=out.name,
        )


def _check_out_dir(out: Path, embeddings_dir: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"output {out} exists and is not a directory")
    if out.resolve() == embeddings_dir.resolve():
        raise BuildError(f"output {out} is the embeddings folder; choose another directory")


def _write_f16(manifest: Manifest, path: Path) -> np.memmap:
    emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(manifest.n, manifest.dim))
    seen = 0
    for start, xb in iter_embeddings(manifest):
        emb[start:start + len(xb)] = xb
        seen = start + len(xb)
    if seen != manifest.n:
        raise EmbeddingsError(f"shards hold {seen} rows but the manifest says {manifest.n}")
    emb.flush()
    return emb


def _perturbed_queries(emb: np.ndarray, nq: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    n, d = emb.shape
    rows = np.sort(rng.choice(n, size=nq, replace=n < nq))
    xq = np.asarray(emb[rows], dtype=np.float32)
    xq += rng.normal(0.0, noise / np.sqrt(d), size=xq.shape).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return xq[rng.permutation(nq)]


def _train_size(spec: IndexSpec, n: int) -> int:
    nlist = spec.nlist or 0
    want = 40 * nlist
    if spec.kind == "ivfpq" or "PQ" in spec.factory:
        want = max(want, 40 * 256)
    return int(min(n, max(want, 1000)))


def _train(index: faiss.Index, spec: IndexSpec, emb: np.ndarray, n: int, rng, seed: int) -> None:
    if index.is_trained:
        return
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if hasattr(inner, "cp"):
        inner.cp.seed = seed
    if hasattr(inner, "pq"):
        inner.pq.cp.seed = seed
    if hasattr(inner, "do_polysemous_training"):
        # the factory turns polysemous training on; we never search in polysemous mode and it costs minutes
        inner.do_polysemous_training = False
    rows = np.sort(rng.choice(n, size=_train_size(spec, n), replace=False))
    xt = np.asarray(emb[rows], dtype=np.float32)
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    index.train(xt)


def _add_and_ground_truth(index: faiss.Index, manifest: Manifest, xq: np.ndarray, k: int) -> np.ndarray:
    """Add every shard batch to the index and, in the same pass, keep the exact top-k of xq."""
    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    for start, xb in iter_embeddings(manifest):
        index.add(xb)
        D, neighbours = faiss.knn(xq, xb, min(k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
        if neighbours.shape[1] < k:
            pad = k - neighbours.shape[1]
            D = np.hstack([D, np.full((len(xq), pad), -np.inf, np.float32)])
            neighbours = np.hstack([neighbours, np.full((len(xq), pad), -1 - start, np.int64)])
        heap.add_result(D, neighbours + start)
    heap.finalize()
    I_ref = heap.I.copy()
    I_ref[~np.isfinite(heap.D)] = -1
    return I_ref


def _tune_category_params(index, spec: IndexSpec, emb, cat_names, cat_codes, params: dict,
                          xq_tune, xq_eval, k: int, target_recall: float):
    """Tune the knobs of category-filtered search on the largest categories; (params, report) or (None, None).

    Filtered queries are often far from the category (a scene asks for shoes), so they may need wider
    probing than unfiltered ones; the reference is exact search over the category's rows.
    """
    kind = index_kind(index)
    sizes = np.bincount(cat_codes, minlength=len(cat_names))
    chosen = [int(j) for j in np.argsort(-sizes, kind="stable") if sizes[j] >= k][:3]
    if kind not in ("ivf", "hnsw") or not chosen:
        return None, None
    per_list = list_counts(index, cat_codes, len(cat_names)) if kind == "ivf" else None
    groups = []
    for j in chosen:
        rows = np.flatnonzero(cat_codes == j)
        sel, bits = bitmap_selector(rows, len(cat_codes))
        xb_c = np.asarray(emb[rows], dtype=np.float32)
        groups.append({"sel": sel, "bits": bits, "per_list": None if per_list is None else per_list[:, j],
                       "ref_tune": exact_search(xq_tune, xb_c, k, rows)[1],
                       "ref_eval": exact_search(xq_eval, xb_c, k, rows)[1]})

    def run(x, kk, p):
        return np.vstack([filtered_search(index, x, kk, p, sel=g["sel"], embeddings=emb,
                                          per_list=g["per_list"])[1] for g in groups])

    def not_cheaper(p):
        return all(p.get(key, 0) >= params.get(key, 0) for key in ("nprobe", "efSearch", "rerank_factor"))

    cands = [p for p in candidate_params(spec, k=k) if not_cheaper(p)] or [dict(params)]
    tuning = tune_search_params(run, spec, xq_tune, np.vstack([g["ref_tune"] for g in groups]), k=k,
                                target_recall=target_recall, candidates=cands)
    recall = recall_at_k(run(xq_eval, k, tuning.search_params), np.vstack([g["ref_eval"] for g in groups]), k)
    report = CategoryRecallReport(k=k, value=round(recall, 5), target=target_recall,
                                  target_met=bool(recall >= target_recall), categories=[cat_names[j] for j in chosen],
                                  queries_per_category=len(xq_eval), tuning_trials=tuning.trials)
    return tuning.search_params, report


def _sharded_add(index, manifest: Manifest, xq: np.ndarray, k: int, out: Path, parallel: dict):
    workers = parallel["workers"]
    threads = max(1, (os.cpu_count() or 1) // workers)
    map_fn = make_map(parallel["engine"], workers, address=parallel["ray_address"], threads=threads)
    return sharded_add(index, manifest, xq, k, work_dir=out, groups=workers, map_fn=map_fn, threads=threads,
                       ondisk_path=out / IVFDATA_FILE if parallel["ondisk"] else None)


def _ivf_stats(index, emb, rng, sample: int = 10_000) -> IvfStats | None:
    """What an update compares against to see drift: list-size imbalance and how well the centroids fit the rows."""
    ivf = ivf_of(index)
    if ivf is None:
        return None
    rows = np.sort(rng.choice(len(emb), size=min(sample, len(emb)), replace=False))
    return IvfStats(nlist=int(ivf.nlist), imbalance=round(list_imbalance(ivf), 4),
                    centroid_score=round(centroid_score(index, np.asarray(emb[rows], dtype=np.float32)), 5))


def list_imbalance(ivf) -> float:
    """nlist * sum(size^2) / ntotal^2: 1.0 for equal lists; the search cost grows with it."""
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.float64)
    return float(ivf.nlist * (sizes ** 2).sum() / max(1.0, sizes.sum()) ** 2)


def centroid_score(index, x: np.ndarray) -> float:
    """Mean inner product of (unit) rows with their nearest coarse centroid: it falls as the data drifts away."""
    if not len(x):
        return float("nan")
    ivf = ivf_of(index)
    D, _ = ivf.quantizer.search(apply_pretransform(index, x / np.linalg.norm(x, axis=1, keepdims=True)), 1)
    return float(np.mean(D[:, 0]))


def _single_query_ms(run, xq: np.ndarray, k: int, params: dict) -> float:
    times = []
    for i in range(len(xq)):
        t0 = time.perf_counter()
        run(xq[i:i + 1], k, params)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3) if times else 0.0


def _set_index_params(index: faiss.Index, params: dict) -> None:
    """Store the tuned knobs in the index itself so index.faiss alone searches as tuned."""
    ps = faiss.ParameterSpace()
    for name in ("nprobe", "efSearch"):
        if name in params:
            ps.set_index_parameter(index, name, int(params[name]))
