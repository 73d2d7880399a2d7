"""Index benchmark: the selected index vs exact IndexFlatIP (and autofaiss's pick) on clustered vectors.

    python -m bench.bench_index [--sizes 100k,1M] [--dim 128] [--clusters 1000] [--queries 200]
                                [--memory-budget 4GB] [--no-autofaiss] [--json results.json]

For each size N: N unit vectors drawn around `--clusters` random centres (plus 200 held-out queries from
the same mixture) are written as embed-catalog shards, then the real build-index job (`build_index`,
selection + training + tuning + recall check) runs in a child process so its peak RSS is its own.
Reported, all measured in this run on this machine:
  build time; index file size and RSS growth of loading it (memory-mapped) and after the timed searches;
  recall@20 of ProductIndex.search against exact IndexFlatIP on the held-out queries;
  single-query latency, median over the queries, with 1 FAISS thread and the default threads, for
  ProductIndex.search (the serving path, Python overhead included), the same with a category filter,
  and exact IndexFlatIP search (the baseline) -> speed-up ratio;
  and, where autofaiss is importable, its own pick on the same vectors (build time, recall, latency).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index.build import build_index
from index.layout import IndexInfo, resolve
from index.select import parse_bytes
from index.store import ProductIndex

ROOT = Path(__file__).resolve().parents[1]   # the repository root: the working folder of the child processes

K = 20
N_CATEGORIES = 10


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 10**3, "m": 10**6}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * mult)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_data(n: int, d: int, n_clusters: int, nq: int, spread: float, seed: int):
    """(xb, categories, xq): unit vectors around random centres; queries held out from the same mixture."""
    rs = np.random.default_rng(seed)
    centres = rs.standard_normal((n_clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m):
        labels = rs.integers(0, n_clusters, m)
        x = np.empty((m, d), np.float32)
        for s in range(0, m, 200_000):
            blk = centres[labels[s:s + 200_000]] + rs.standard_normal((len(labels[s:s + 200_000]), d),
                                                                       dtype=np.float32) * (spread / np.sqrt(d))
            x[s:s + len(blk)] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
        return x, labels

    xb, labels = draw(n)
    xq, _ = draw(nq)
    return xb, (labels % N_CATEGORIES).astype(np.int64), xq


def write_shards(root: Path, xb: np.ndarray, cat_codes: np.ndarray, shard_rows: int = 100_000) -> None:
    root.mkdir(parents=True, exist_ok=True)
    n, d = xb.shape
    names = np.array([f"cat{c}" for c in range(N_CATEGORIES)])
    shards = []
    for i, s in enumerate(range(0, n, shard_rows)):
        e = min(n, s + shard_rows)
        pq.write_table(pa.table({
            "product_id": pa.array([f"p{r:08d}" for r in range(s, e)]),
            "category": pa.array(names[cat_codes[s:e]]),
            "image_path": pa.array([""] * (e - s)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(xb[s:e].reshape(-1)), d),
        }), root / f"part-{i:05d}.parquet")
        shards.append({"name": f"part-{i:05d}.parquet", "rows": e - s})
    (root / "_manifest.json").write_text(json.dumps({
        "checkpoint_sha256": "bench", "backbone": "synthetic", "dim": d, "complete": True, "shards": shards}))


def child_build(emb: str, out: str, budget: str) -> None:
    """Run build_index in this (child) process and print its info plus peak RSS as JSON."""
    info = build_index(emb, out, memory_budget_bytes=parse_bytes(budget))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"info": info.to_dict(), "peak_rss_mb": peak_rss_mb}))


def child_serve(out: str, data: str) -> None:
    """Load the index in a fresh process; print RSS growth, recall and single-query latencies as JSON."""
    npz = np.load(data)
    xq, I_ref, Ic_ref = npz["xq"], npz["I_ref"], npz["Ic_ref"]
    default_threads = faiss.omp_get_max_threads()
    pq.read_table(resolve(out)[0] / "ids.parquet").slice(0, 1)   # fault in pyarrow's library pages (~80 MB) first
    rss0 = rss_mb()
    index = ProductIndex.load(out)
    rss_load = rss_mb() - rss0
    _, found = index.search(xq, K)
    _, Ic = index.search(xq, K, category="cat0")
    ours = latency_both(lambda x: index.search(x, K), xq, default_threads)
    ours_cat = latency_both(lambda x: index.search(x, K, category="cat0"), xq, default_threads)
    raw = latency_both(lambda x: index.faiss_index.search(x, K), xq, default_threads)
    print("RESULT " + json.dumps({
        "mmap": index.mmap, "rss_growth_load_mb": rss_load, "rss_growth_after_search_mb": rss_mb() - rss0,
        "recall": recall(found, I_ref), "recall_category": recall(Ic, Ic_ref),
        "category_rows": int(len(index.rows_for_category("cat0"))),
        "ms_1t": ours[0], "ms_default": ours[1], "ms_cat_1t": ours_cat[0], "ms_cat_default": ours_cat[1],
        "raw_faiss_ms_1t": raw[0], "raw_faiss_ms_default": raw[1]}))


def run_child(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_index", *argv], capture_output=True, text=True, cwd=ROOT)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    return json.loads(line[0][len("RESULT "):])


def recall(found, I_ref) -> float:
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / len(b) for a, b in zip(found, I_ref, strict=True)]))


def single_query_ms(fn, xq) -> float:
    fn(xq[:1])                                            # warm-up
    times = []
    for i in range(len(xq)):
        t0 = time.perf_counter()
        fn(xq[i:i + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def latency_both(fn, xq, default_threads: int) -> tuple[float, float]:
    faiss.omp_set_num_threads(1)
    one = single_query_ms(fn, xq)
    faiss.omp_set_num_threads(default_threads)
    return one, single_query_ms(fn, xq)


def bench_autofaiss(xb, xq, I_ref, budget: str, default_threads: int) -> dict:
    try:
        from autofaiss import build_index as af_build
    except Exception as e:                                # noqa: BLE001 - any import failure means skip
        return {"skipped": f"autofaiss not importable ({type(e).__name__}: {str(e).splitlines()[0][:80]})"}
    t0 = time.perf_counter()
    try:
        index, infos = af_build(xb, save_on_disk=False, metric_type="ip", max_index_memory_usage=budget,
                                current_memory_available="8G", min_nearest_neighbors_to_retrieve=K,
                                verbose=40)
    except Exception as e:                                # noqa: BLE001
        return {"skipped": f"autofaiss failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})"}
    build_s = time.perf_counter() - t0
    _, found = index.search(xq, K)
    one, default = latency_both(lambda x: index.search(x, K), xq, default_threads)
    return {"factory": infos.get("index_key"), "params": infos.get("index_param"), "build_s": build_s,
            "recall": recall(found, I_ref), "ms_1t": one, "ms_default": default,
            "size_bytes": infos.get("size in bytes")}


def run_size(n: int, args, workdir: Path, default_threads: int) -> dict:
    print(f"\n== N={n:,} d={args.dim} clusters={args.clusters} ==", flush=True)
    t0 = time.perf_counter()
    xb, cat_codes, xq = make_data(n, args.dim, args.clusters, args.queries, args.spread, args.seed)
    emb, out, data = workdir / f"emb-{n}", workdir / f"idx-{n}", workdir / f"queries-{n}.npz"
    write_shards(emb, xb, cat_codes)
    print(f"  data + shards: {time.perf_counter() - t0:.1f}s", flush=True)

    # exact baseline, same process as autofaiss, same queries
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(xb)
    _, I_ref = flat.search(xq, K)
    exact = latency_both(lambda x: flat.search(x, K), xq, default_threads)
    flat.reset()                                          # its vectors are not needed any more
    rows = np.flatnonzero(cat_codes == 0)
    _, Ic_local = faiss.knn(xq, xb[rows], K, metric=faiss.METRIC_INNER_PRODUCT)
    np.savez(data, xq=xq, I_ref=I_ref, Ic_ref=rows[Ic_local])
    print(f"  exact IndexFlatIP: {exact[0]:.2f} ms/query (1 thread), {exact[1]:.2f} ms (default)", flush=True)

    built = run_child("--_child-build", str(emb), str(out), args.memory_budget)
    info = IndexInfo.from_dict(built["info"])
    shutil.rmtree(emb)
    print(f"  build-index: {info.factory} {info.search_params} in {info.build_seconds:.1f}s, "
          f"recall@20 at build {info.recall.value:.4f}", flush=True)
    serve = run_child("--_child-serve", str(out), str(data))
    print(f"  served: recall@20={serve['recall']:.4f} (category cat0: {serve['recall_category']:.4f}); "
          f"{serve['ms_1t']:.3f} ms/query (1 thread), {serve['ms_default']:.3f} ms (default)", flush=True)
    result = {
        "n": n, "factory": info.factory, "search_params": info.search_params,
        "category_search_params": info.category_search_params,
        "build_s": info.build_seconds, "build_peak_rss_mb": built["peak_rss_mb"],
        "index_file_bytes": info.memory.index_file_bytes,
        "embeddings_f16_bytes": info.memory.embeddings_f16_bytes,
        "build_recall": info.recall.value,
        "build_category_recall": info.category_recall.value if info.category_recall else None,
        "exact_ms_1t": exact[0], "exact_ms_default": exact[1], **serve,
    }
    shutil.rmtree(out)
    if args.autofaiss and n <= parse_size(args.autofaiss_max):
        print("  autofaiss ...", flush=True)
        result["autofaiss"] = bench_autofaiss(xb, xq, I_ref, args.memory_budget, default_threads)
        print(f"  autofaiss: {result['autofaiss']}", flush=True)
    elif args.autofaiss:
        result["autofaiss"] = {"skipped": f"N > --autofaiss-max {args.autofaiss_max} (its HNSW build is too "
                                          "slow for this run's time budget on 2 cores)"}
    return result


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Machine: {meta['machine']}; faiss {meta['faiss']}; numpy {meta['numpy']}; {meta['date']}.",
             f"Data: d={meta['dim']}, {meta['clusters']} gaussian clusters (noise norm {meta['spread']}), "
             f"{meta['queries']} held-out queries from the same mixture, k={K}; memory budget {meta['budget']}; "
             f"{N_CATEGORIES} categories tied to clusters (filtered search uses cat0).", "",
             "| N | selected index (params) | build s | build peak RSS | index file "
             "| RSS growth: load / after searches | recall@20 | category recall@20 "
             "| ms/query 1 thr | ms/query default thr | raw FAISS ms 1 thr "
             "| category ms 1 thr | exact ms 1 thr | exact ms default thr | speed-up vs exact (1 thr) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['n']:,} | {r['factory']} {r['search_params']} | {r['build_s']:.1f} | "
            f"{r['build_peak_rss_mb']:.0f} MB | {r['index_file_bytes'] / 1e6:.0f} MB | "
            f"{r['rss_growth_load_mb']:.0f} / {r['rss_growth_after_search_mb']:.0f} MB | {r['recall']:.4f} | "
            f"{r['recall_category']:.4f} ({r['category_rows']:,} rows) | {r['ms_1t']:.3f} | {r['ms_default']:.3f} | "
            f"{r['raw_faiss_ms_1t']:.3f} | {r['ms_cat_1t']:.3f} | {r['exact_ms_1t']:.2f} | "
            f"{r['exact_ms_default']:.2f} | {r['exact_ms_1t'] / r['ms_1t']:.0f}x |")
    af = [(r["n"], r.get("autofaiss")) for r in results if r.get("autofaiss")]
    if af:
        lines += ["", "| N | autofaiss pick (params) | build s | size | recall@20 | ms/query 1 thr | "
                      "ms/query default thr |", "|---|---|---|---|---|---|---|"]
        for n, a in af:
            if "skipped" in a:
                lines.append(f"| {n:,} | skipped: {a['skipped']} | | | | | |")
            else:
                size = f"{a['size_bytes'] / 1e6:.0f} MB" if a.get("size_bytes") else "?"
                lines.append(f"| {n:,} | {a['factory']} ({a['params']}) | {a['build_s']:.1f} | {size} | "
                             f"{a['recall']:.4f} | {a['ms_1t']:.3f} | {a['ms_default']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_child-build":
        child_build(*sys.argv[2:])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--_child-serve":
        child_serve(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k,1M")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.5, help="per-vector noise norm around its centre")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--memory-budget", default="4GB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--autofaiss", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--autofaiss-max", default="100k", help="largest N to build autofaiss's pick for")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    default_threads = faiss.omp_get_max_threads()
    meta = {"machine": f"{os.cpu_count()} cores ({platform.machine()}, {platform.python_version()}), "
                       f"{default_threads} FAISS threads by default",
            "faiss": faiss.__version__, "numpy": np.__version__, "date": dt.date.today().isoformat(),
            "dim": args.dim, "clusters": args.clusters, "spread": args.spread, "queries": args.queries,
            "budget": args.memory_budget}
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        for size in args.sizes.split(","):
            results.append(run_size(parse_size(size), args, Path(tmp), default_threads))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s\n")
    print(markdown(results, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
