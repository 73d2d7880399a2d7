"""Scale benchmark: single-process vs sharded vs on-disk index builds at N vectors, beside exact search, in one run.

    python -m bench.bench_scale [--n 1000000] [--workers 2] [--dim 128] [--clusters 1000] [--queries 200]
                                [--memory-budget 4GB] [--builds single,sharded,ondisk] [--json out.json]
                                [--factory IVF256,PQ8] [--workdir DIR --keep] [--formats old,new]
                                [--target-recall 0.98] [--recall-queries 500 1000]

Data: N unit vectors (d=128) around `--clusters` random centres, written as embed-catalog shards block by
block (never all in RAM), and held-out queries from the same mixture; the exact top-20 of every query is
kept while the shards are written. Each build runs the real `build_index` in a child process (its peak
RSS is its own): `single` is today's one-process build, `sharded` adds with `--workers` local processes
and merges in memory, `ondisk` does the same into on-disk inverted lists. Each built index is then loaded
in a fresh process: anonymous memory (RssAnon) and RSS growth of the load, recall@20 of the two-stage
answer (ProductIndex.search: IVF candidates, exact re-rank from float16 where the codes are lossy) against
exact search, single-query latency cold (the build's files evicted from the page cache first) and warm.
The exact baseline's single-query latency is measured on a block of up to 1M vectors and scaled by N
(a linear scan). `--add-scaling` also times the add phase alone with 1 and with `--workers` processes of
one thread each on the same trained index (pure scale-out).

`--formats old,new` serves each build in both index formats, in fresh processes in the order old, new,
new, old (ABBA: drift in the machine's load hits both alike): format 1 (row metadata read into RAM) and
format 2 (memory-mapped row files), copies of the same build (index.rows.copy_as_format, big files
hard-linked). `--keep` keeps the data and the builds in `--workdir` and reuses them on the next run, so a
10M build is paid once; `--factory` forces the index (e.g. the cheapest IVF-PQ that still puts the lists
on disk).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
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

from common import defaults
from index.build import BuildParams, build_index
from index.embedding_shards import read_manifest
from index.layout import IndexInfo, publish, read_info, resolve
from index.parallel import process_map
from index.rows import copy_as_format
from index.sharded import sharded_add
from index.store import ProductIndex

ROOT = Path(__file__).resolve().parents[1]   # the repository root: the working folder of the child processes

K = 20
N_CATEGORIES = 10
SHARD_ROWS = 100_000
EXACT_BLOCK = 1_000_000


def status(key: str) -> float:
    """A /proc/self/status field in MB (VmRSS, RssAnon, VmHWM ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_data(root: Path, n: int, d: int, n_clusters: int, nq: int, spread: float, seed: int):
    """Write the shards block by block; return (queries, exact top-k ids, ms per query of an exact scan of
    min(n, 1M) rows)."""
    rs = np.random.default_rng(seed)
    centres = rs.standard_normal((n_clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m):
        labels = rs.integers(0, n_clusters, m)
        x = centres[labels] + rs.standard_normal((m, d), dtype=np.float32) * (spread / np.sqrt(d))
        return x / np.linalg.norm(x, axis=1, keepdims=True), labels

    xq, _ = draw(nq)
    heap = faiss.ResultHeap(nq, K, keep_max=True)
    names = np.array([f"cat{c}" for c in range(N_CATEGORIES)])
    root.mkdir(parents=True)
    shards, exact_ms, first_block = [], None, []
    for i, s in enumerate(range(0, n, SHARD_ROWS)):
        e = min(n, s + SHARD_ROWS)
        xb, labels = draw(e - s)
        D, neighbours = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(D, neighbours + s)
        if s < EXACT_BLOCK:
            first_block.append(xb)
        if e >= min(n, EXACT_BLOCK) and exact_ms is None:
            block = np.vstack(first_block)
            first_block = []
            flat = faiss.IndexFlatIP(d)
            flat.add(block)
            faiss.omp_set_num_threads(1)
            flat.search(xq[:1], K)
            t0 = time.perf_counter()
            for q in range(min(nq, 50)):
                flat.search(xq[q:q + 1], K)
            exact_ms = (time.perf_counter() - t0) * 1e3 / min(nq, 50) * n / len(block)
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            del flat, block
        pq.write_table(pa.table({
            "product_id": pa.array([f"p{r:09d}" for r in range(s, e)]),
            "category": pa.array(names[labels % N_CATEGORIES]),
            "image_path": pa.array([""] * (e - s)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(xb.reshape(-1)), d),
        }), root / f"part-{i:05d}.parquet")
        shards.append({"name": f"part-{i:05d}.parquet", "rows": e - s})
    heap.finalize()
    (root / "_manifest.json").write_text(json.dumps({
        "checkpoint_sha256": "bench", "backbone": "synthetic", "dim": d, "complete": True, "shards": shards}))
    return xq, heap.I, exact_ms


def child_build(emb: str, out: str, budget: str, mode: str, workers: str, factory: str, tuning: str) -> None:
    kw = {"single": {}, "sharded": {"workers": int(workers)}, "ondisk": {"workers": int(workers), "ondisk": True}}[mode]
    target_recall, n_tune, n_eval = json.loads(tuning)
    params = BuildParams(memory_budget_bytes=budget, factory=factory or None, target_recall=target_recall,
                         n_tune_queries=n_tune, n_eval_queries=n_eval, **kw)
    info = build_index(emb, out, params)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent's peak
    print("RESULT " + json.dumps({"info": info.to_dict(), "peak_rss_mb": status("VmHWM")}))


def _evict(build: Path) -> None:
    """Drop this build's files from the page cache (only them), so the next reads come from disk."""
    for path in build.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _warm_pyarrow() -> None:
    """Fault in pyarrow's own pages (parquet and IPC readers, ~80 MB) before measuring, whatever the format reads."""
    table = pa.table({"x": pa.array(["a"] * 100)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    pq.read_table(pa.BufferReader(sink.getvalue()))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    pa.ipc.open_file(pa.BufferReader(sink.getvalue())).read_all()


def child_serve(out: str, data: str) -> None:
    npz = np.load(data)
    xq, reference = npz["xq"], npz["reference"]
    faiss.omp_set_num_threads(1)
    _warm_pyarrow()
    build, _ = resolve(out)
    _evict(build)
    # the FAISS index alone (in-memory lists, or memory-mapped on-disk lists), then the whole ProductIndex
    ondisk = (build / "index.ivfdata").exists()
    a0 = status("RssAnon")
    alone = faiss.read_index(str(build / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR if ondisk else
                             faiss.IO_FLAG_MMAP_IFC)
    index_anon = status("RssAnon") - a0
    del alone
    _evict(build)
    anon0, rss0 = status("RssAnon"), status("VmRSS")
    t0 = time.perf_counter()
    index = ProductIndex.load(out)
    load_s = time.perf_counter() - t0
    anon_load, rss_load = status("RssAnon") - anon0, status("VmRSS") - rss0

    def one(i):
        t = time.perf_counter()
        _, neighbours = index.search(xq[i:i + 1], K)
        return (time.perf_counter() - t) * 1e3, neighbours[0]

    cold = [one(i) for i in range(len(xq))]
    warm = [one(i) for i in range(len(xq))]
    neighbours = np.vstack([r[1] for r in warm])
    rec = float(np.mean([len(np.intersect1d(a[a >= 0], b)) / K for a, b in zip(neighbours, reference, strict=True)]))
    cold_ms, warm_ms = np.array([c[0] for c in cold]), np.array([w[0] for w in warm])
    anon_after = status("RssAnon") - anon0
    category_ms = _category_latency(index, xq)
    print("RESULT " + json.dumps({
        "load_s": load_s, "anon_load_mb": anon_load, "rss_load_mb": rss_load, "faiss_index_anon_mb": index_anon,
        "anon_after_mb": anon_after, "rss_after_mb": status("VmRSS") - rss0, "recall": rec,
        "anon_after_category_mb": status("RssAnon") - anon0,
        "category_warm_p50_ms": float(np.median(category_ms)),
        "category_warm_p99_ms": float(np.percentile(category_ms, 99)),
        "cold_p50_ms": float(np.median(cold_ms)), "cold_p99_ms": float(np.percentile(cold_ms, 99)),
        "warm_p50_ms": float(np.median(warm_ms)), "warm_p99_ms": float(np.percentile(warm_ms, 99)),
        "disk_bytes": {p.name: p.stat().st_size for p in build.iterdir() if p.is_file()}}))


def _category_latency(index: ProductIndex, xq: np.ndarray) -> np.ndarray:
    """ms per single query filtered to the largest category (its rows: the row metadata), second pass of two."""
    category = max(index.categories, key=lambda c: len(index.rows_for_category(c)))

    def one(i):
        t = time.perf_counter()
        index.search(xq[i:i + 1], K, category=category)
        return (time.perf_counter() - t) * 1e3

    for i in range(len(xq)):
        one(i)                      # the first pass builds the category's selector and list counts
    return np.array([one(i) for i in range(len(xq))])


def child_addscale(emb: str, out: str, workers: str) -> None:
    """The add phase alone, 1 process vs `workers` processes, one FAISS thread each, same trained index."""
    build, _ = resolve(out)
    manifest = read_manifest(emb)
    xq = np.zeros((1, manifest.dim), np.float32)
    result = {}
    for w in (1, int(workers)):
        index = faiss.read_index(str(build / "index.faiss"))
        faiss.extract_index_ivf(index).invlists.reset()
        faiss.extract_index_ivf(index).ntotal = index.ntotal = 0
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            _, timings = sharded_add(index, manifest, xq, 1, work_dir=Path(tmp), groups=w, map_fn=process_map(w),
                                     threads=1)
        result[str(w)] = {"wall": timings["add_seconds"], "cpu": round(sum(timings["group_cpu_seconds"]), 3)}
        del index
    print("RESULT " + json.dumps(result))


def run_child(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_scale", *argv], capture_output=True, text=True, cwd=ROOT)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stdout[-1000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def prepare_data(root: Path, args) -> dict:
    """Write the shards and queries into root (or reuse them with --keep); return their timings."""
    saved = root / "data.json"
    if args.keep and saved.is_file() and (root / "q.npz").is_file():
        return {**json.loads(saved.read_text()), "reused": True}
    t0 = time.perf_counter()
    xq, reference, exact_ms = write_data(root / "emb", args.n, args.dim, args.clusters, args.queries, args.spread,
                                     args.seed)
    np.savez(root / "q.npz", xq=xq, reference=reference)
    timing = {"exact_ms_1t": exact_ms, "data_s": time.perf_counter() - t0}
    saved.write_text(json.dumps(timing))
    return timing


def build_or_reuse(root: Path, mode: str, args) -> tuple[IndexInfo, float | None]:
    """Build `mode` in a child process (or, with --keep, reuse a finished build of it); (info, peak RSS MB)."""
    out, saved = root / f"idx-{mode}", root / f"build-{mode}.json"
    if args.keep and saved.is_file():
        built = json.loads(saved.read_text())
        return read_info(out), built.get("peak_rss_mb")
    tuning = json.dumps([args.target_recall, *args.recall_queries])
    built = run_child("--_child-build", str(root / "emb"), str(out), args.memory_budget, mode, str(args.workers),
                      args.factory or "", tuning)
    saved.write_text(json.dumps(built))
    return IndexInfo.from_dict(built["info"]), built["peak_rss_mb"]


def serve_formats(out: Path, data: Path, formats: list[str], repeats: int = 1) -> dict:
    """Serve one build in each format (copies of it), ABBA (`repeats` rounds) when two; their figures averaged."""
    if formats == ["current"]:
        return {"current": run_child("--_child-serve", str(out), str(data))}
    build, _ = resolve(out)
    dirs = {}
    for name in formats:
        dirs[name] = out.parent / f"{out.name}-{name}"
        shutil.rmtree(dirs[name], ignore_errors=True)
        copy_as_format(build, dirs[name] / "v000001", {"old": 1, "new": 2}[name])
        publish(dirs[name], dirs[name] / "v000001")
    order = (formats + formats[::-1]) * repeats
    runs = {name: [] for name in formats}
    for name in order:
        runs[name].append(run_child("--_child-serve", str(dirs[name]), str(data)))
    for path in dirs.values():
        shutil.rmtree(path)
    served = {}
    for name, rs in runs.items():
        mean = {k: float(np.mean([r[k] for r in rs])) for k, v in rs[0].items() if isinstance(v, (int, float))}
        kept = ("anon_load_mb", "warm_p50_ms", "warm_p99_ms", "category_warm_p50_ms")
        served[name] = {**rs[0], **mean, "runs": [{k: round(r[k], 4) for k in kept} for r in rs]}
    return served


def report(mode: str, info: IndexInfo, peak_rss_mb, load: str, served: dict) -> dict:
    r = {"factory": info.factory, "params": info.search_params, "build_s": info.build_seconds,
         "phases": info.phases, "peak_rss_mb": peak_rss_mb, "load_during": load, "build_recall": info.recall.value,
         "formats": served}
    print(f"  {mode}: {r['factory']} {r['params']} build {r['build_s']:.0f}s (add {r['phases']['add_seconds']:.0f}s, "
          f"train {r['phases']['train_seconds']:.0f}s), peak RSS {r['peak_rss_mb'] or float('nan'):.0f} MB, "
          f"load avg {load}", flush=True)
    for name, s in served.items():
        print(f"    {name} format: anon loaded {s['anon_load_mb']:.1f} MB, recall@20 {s['recall']:.4f}, warm "
              f"{s['warm_p50_ms']:.3f}/{s['warm_p99_ms']:.3f} ms, category {s['category_warm_p50_ms']:.3f}/"
              f"{s['category_warm_p99_ms']:.3f} ms, cold p99 {s['cold_p99_ms']:.2f} ms, runs "
              f"{s.get('runs', '')}", flush=True)
    if {"old", "new"} <= set(served):
        r["new_over_old"] = {k: served["new"][k] / served["old"][k]
                             for k in ("warm_p50_ms", "warm_p99_ms", "category_warm_p50_ms", "category_warm_p99_ms")}
        r["anon_saved_mb"] = served["old"]["anon_load_mb"] - served["new"]["anon_load_mb"]
        ratio = r["new_over_old"]
        print(f"    new / old warm p50 {ratio['warm_p50_ms']:.3f}, p99 {ratio['warm_p99_ms']:.3f}, category p50 "
              f"{ratio['category_warm_p50_ms']:.3f}, p99 {ratio['category_warm_p99_ms']:.3f}; "
              f"anonymous memory saved {r['anon_saved_mb']:.1f} MB", flush=True)
    return r


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("--_child-"):
        {"--_child-build": child_build, "--_child-serve": child_serve,
         "--_child-addscale": child_addscale}[sys.argv[1]](*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.5)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--memory-budget", default="4GB")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--builds", default="single,sharded,ondisk")
    ap.add_argument("--factory", default=None, help="force this FAISS factory string (default: the selection's)")
    ap.add_argument("--target-recall", type=float, default=defaults.TARGET_RECALL,
                    help="the build's tuning target (a low one stops at the cheapest knobs: a quick build)")
    ap.add_argument("--recall-queries", type=int, nargs=2, default=(500, 1000), metavar=("TUNE", "EVAL"),
                    help="the build's tuning and evaluation query counts")
    ap.add_argument("--formats", default="current", help="serve each build as 'current', or in 'old,new' (ABBA)")
    ap.add_argument("--repeats", type=int, default=1, help="ABBA rounds of serving runs with --formats old,new")
    ap.add_argument("--add-scaling", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where the shards and indexes go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep data and builds in --workdir and reuse them")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.keep and args.workdir is None:
        ap.error("--keep needs --workdir")
    meta = {"machine": f"{os.cpu_count()} cores ({platform.machine()}), "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
            "faiss": faiss.__version__, "date": dt.datetime.now().isoformat(timespec="minutes"), "n": args.n,
            "dim": args.dim, "workers": args.workers, "budget": args.memory_budget, "load_start": loadavg()}
    print(f"== N={args.n:,} d={args.dim}, load average {meta['load_start']}", flush=True)
    results = {"meta": meta, "builds": {}}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        root = args.workdir if args.keep else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench_scale_", dir=args.workdir)))
        results.update(prepare_data(root, args))
        print(f"  data {results['data_s']:.0f}s; exact scan {results['exact_ms_1t']:.1f} ms/query (1 thread)",
              flush=True)
        modes = args.builds.split(",")
        for mode in modes:
            load = loadavg()
            info, peak = build_or_reuse(root, mode, args)
            served = serve_formats(root / f"idx-{mode}", root / "q.npz", args.formats.split(","), args.repeats)
            results["builds"][mode] = report(mode, info, peak, load, served)
            if args.add_scaling and mode == "single":
                results["add_scaling"] = run_child("--_child-addscale", str(root / "emb"), str(root / f"idx-{mode}"),
                                                   str(args.workers))
                print(f"  add phase, 1 thread per process: {results['add_scaling']}", flush=True)
            if mode != modes[-1] and not args.keep:
                shutil.rmtree(root / f"idx-{mode}")
    meta["load_end"] = loadavg()
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
