"""embed-catalog on Ray Data (a local instance) against the local engine, same images, same run.

    python -m bench.bench_embed_ray [--n 512] [--repeats 2] [--manifest catalog.parquet] [--ray-workers 1]

Both engines run `embed_catalog` end to end on the same JPEGs (generated photo-like 256 px images, or
`--manifest`), interleaved `--repeats` times; the best of each is kept (other processes on a shared machine
only ever slow a run down). Steady state is the rate from the first embedded batch to the last (model
load, worker and actor start excluded); the local Ray instance's start-up is timed apart, once, before the
runs (the engine then uses it). The figure of merit is ray / local in steady state (target >= 0.8 on 2 cores).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.bench_embed import make_jpegs
from common.ray_cluster import connect, import_ray
from jobs.catalog import embed_catalog as job
from pipeline.checkpoint import save_checkpoint
from pipeline.embedder import build_embedder


def timed(engine):
    """Wrap an engine so the run records when its first batch and its last batch came out."""
    marks = {}

    def run(embed_job):
        batches = engine(embed_job)

        def stream():
            first = True
            for batch in batches:
                if first:
                    marks["first"], first = time.perf_counter(), False
                    marks["skip"] = len(batch.rows) + len(batch.rejects)
                yield batch
            marks["last"] = time.perf_counter()
        return stream()
    return run, marks


def one_run(engine: str, manifest: Path, ckpt: Path, out: Path, workers: int | None, limit: int | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    run, marks = timed(job.RUNNERS[engine])
    saved = dict(job.RUNNERS)
    job.RUNNERS[engine] = run
    try:
        config = job.EmbedCatalogConfig(shard_size=10_000, engine=engine, workers=workers, limit=limit)
        s = job.embed_catalog(manifest, ckpt, out, progress=False, config=config)
    finally:
        job.RUNNERS.clear()
        job.RUNNERS.update(saved)
    steady = (s["processed"] - marks["skip"]) / (marks["last"] - marks["first"])
    return {"end_to_end": s["processed"] / s["seconds"], "steady": steady, "seconds": s["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--manifest", type=Path, default=None)
    ap.add_argument("--ray-workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="embed only the first N rows of --manifest")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_embed_ray_") as tmp:
        tmp = Path(tmp)
        manifest = args.manifest or make_jpegs(tmp / "cat", args.n)
        ckpt = tmp / "checkpoint.pt"
        save_checkpoint(ckpt, build_embedder(categories=["shoes"], backbone_weights="random"),
                        config={"backbone_weights": "random"})
        print(f"{dt.datetime.now().isoformat(timespec='minutes')}, {os.cpu_count()} cores, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        t0 = time.perf_counter()
        connect(None)
        startup = time.perf_counter() - t0
        print(f"Ray local instance start-up: {startup:.1f} s", flush=True)
        best = {"local": None, "ray": None}
        for r in range(args.repeats):
            for engine in ("local", "ray"):
                res = one_run(engine, manifest, ckpt, tmp / f"out-{engine}",
                              args.ray_workers if engine == "ray" else None, args.limit)
                print(f"  run {r + 1} {engine:5s}: steady {res['steady']:.1f} img/s, end to end "
                      f"{res['end_to_end']:.1f} img/s ({res['seconds']:.1f} s), load "
                      f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
                if best[engine] is None or res["steady"] > best[engine]["steady"]:
                    best[engine] = res
        import_ray().shutdown()
    ratio = best["ray"]["steady"] / best["local"]["steady"]
    e2e = best["ray"]["end_to_end"] / best["local"]["end_to_end"]
    print(f"best steady state: local {best['local']['steady']:.1f} img/s, ray {best['ray']['steady']:.1f} img/s: "
          f"ratio {ratio:.2f} (target >= 0.8); end to end (Ray start-up excluded) ratio {e2e:.2f}; "
          f"Ray start-up {startup:.1f} s apart")


if __name__ == "__main__":
    main()
