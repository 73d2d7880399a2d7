"""Which `ctl serve` settings to make the defaults: several configurations, interleaved, in one run.

    python -m bench.bench_serve_configs [--configs NAME,...] [--rounds 2] [--concurrency 1,4,16]
                                        [--requests 60] [--endpoint retrieve] [--device cpu] [--json FILE]
                                        [--before DIR]

Each configuration is a set of `ctl serve` flags (and environment): it is started, waited on until
/readyz says ready, loaded at each concurrency level, stopped; rounds go through every configuration in
turn, so the machine's load moves across all of them alike. Printed per configuration and level: the
median over rounds of requests/s, the server's CPU per request (/proc, the client excluded), p50 and p99.
The bare traced backbone's images/s and CPU per image (both cores, batch 1, one thread each) are measured
at the start of every round as the yardstick. `--before DIR` adds the configuration "before": the server
of another checkout (a worktree of an older commit) with its own defaults, for a before/after of code.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
from pathlib import Path

from bench.bench_query import find_artifacts
from bench.bench_serve import Bare, counters, load, per_request_counters, start_server, wait_ready
from common.allocator import MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES

# common.allocator's setting applied from outside: glibc reads these variables when the process starts (a fixed
# threshold, as mallopt sets it). docs/benchmarks-serve.md, 2026-12-07 seventh session.
KEEP_FREED = [f"env:MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD_BYTES}",
              f"env:MALLOC_TRIM_THRESHOLD_={TRIM_THRESHOLD_BYTES}"]
CONFIGS = {
    "default": [],
    "before": [],                     # the --before checkout's server, its defaults
    "forward-on-2-threads": ["--model-threads", "1", "--threads", "2", "--batch-threads", "2"],  # 2026-12-04's default
    "model-threads1": ["--model-threads", "1"],
    "model-threads2": ["--model-threads", "2"],
    "threads1": ["--threads", "1"],
    "batch-threads1": ["--batch-threads", "1"],
    "batch-threads2": ["--batch-threads", "2"],
    "batch1": ["--max-batch", "1"],
    "threads1-batch1": ["--threads", "1", "--max-batch", "1"],
    "batch8": ["--max-batch", "8"],
    "decode1": ["--decode-threads", "1"],
    "pipeline": ["--pipeline"],
    "omp-passive": ["env:OMP_WAIT_POLICY=PASSIVE"],
    "frontends2": ["--frontends", "2"],   # two front-end processes feeding one model process
    "keep": KEEP_FREED,   # the two thresholds from outside (seventh session); the server now sets them, and a top pad
    "batch1-keep": ["--max-batch", "1", *KEEP_FREED],   # batches of one, without their page faults
    "arena2": ["env:MALLOC_ARENA_MAX=2"],     # at most 2 glibc malloc arenas: steadier RSS, more CPU (measured)
    "release": ["--release-freed-memory"],    # glibc's own thresholds: the default before the eighth session
    "batch2": ["--max-batch", "2"],
    "batch4": ["--max-batch", "4"],           # the CPU default, named (measured against batch2 in either order)
}


def run_config(flags: list[str], checkpoint: Path, index_dir: Path, payloads, args, root: Path | None = None) -> dict:
    """One configuration: start it, each level, stop it; {level: figures}."""
    env = dict(f.removeprefix("env:").split("=", 1) for f in flags if f.startswith("env:"))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        extra = [f for f in flags if not f.startswith("env:")]
        proc, url = (start_server(checkpoint, index_dir, args.device, extra) if root is None else
                     start_server(checkpoint, index_dir, args.device, extra, root=root))
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    try:
        ready = wait_ready(url)
        endpoint, params = f"/v1/{args.endpoint}", ({"k": 4} if args.endpoint == "look" else {"k": 20})
        load(url, payloads, concurrency=4, requests=12, duration=60, endpoint=endpoint, params=params)
        out = {"warm_up_s": (ready.get("warm_up") or {}).get("seconds"), "load_before": os.getloadavg()[0]}
        for c in [int(c) for c in args.concurrency.split(",")]:
            before = counters(proc.pid)
            r = load(url, payloads, concurrency=c, requests=max(args.requests, 4 * c), duration=args.duration,
                     endpoint=endpoint, params=params)
            r.update(per_request_counters(proc.pid, before, r["ok"]))
            out[c] = r
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def report(results: dict[str, list[dict]], bare: list[tuple[float, float]], levels: list[int]) -> list[str]:
    """One line per configuration and level: medians over rounds."""
    rate_bare = statistics.median(b for b, _ in bare)
    cpu_bare = 1e3 * statistics.median(c for _, c in bare)
    lines = [f"bare traced backbone (both cores, batch 1, one thread each): {rate_bare:.1f} img/s, {cpu_bare:.1f} "
             f"ms CPU/img (rounds: {', '.join(f'{b:.1f} img/s, {1e3 * c:.1f} ms' for b, c in bare)})",
             "| config | concurrency | req/s | x bare | server CPU ms/req | x bare CPU | kernel ms/req "
             "| page faults/req | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rounds in results.items():
        for c in levels:
            figures = [r[c] for r in rounds]
            rate = statistics.median(f["throughput"] for f in figures)
            errors = sum(n for f in figures for s, n in f["statuses"].items() if s != "200")
            cpu = statistics.median(f["server_cpu_per_request_ms"] for f in figures)
            kernel = statistics.median(f.get("server_kernel_per_request_ms", math.nan) for f in figures)
            faults = statistics.median(f.get("server_minor_faults_per_request", math.nan) for f in figures)
            lines.append(f"| {name} | {c} | {rate:.1f} | {rate / rate_bare:.2f} | {cpu:.1f} | {cpu / cpu_bare:.2f} | "
                         f"{kernel:.1f} | {faults:.0f} | "
                         f"{statistics.median(f['p50_ms'] for f in figures):.0f} | "
                         f"{statistics.median(f['p99_ms'] for f in figures):.0f} | {errors} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="default,threads1,batch-threads2,batch1,omp-passive",
                    help=f"comma-separated, of: {', '.join(CONFIGS)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--endpoint", choices=["look", "retrieve"], default="retrieve")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--before", type=Path, default=None, help="another checkout, served as the configuration 'before'")
    args = ap.parse_args(argv)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}")
    if ("before" in names) != (args.before is not None):
        ap.error("the configuration 'before' and --before DIR go together")
    if args.before is not None and not (args.before / "jobs" / "cli.py").is_file():
        ap.error(f"--before {args.before}: not a checkout of this project (no jobs/cli.py)")
    levels = [int(c) for c in args.concurrency.split(",")]
    checkpoint, index_dir, scenes, source, tmp = find_artifacts(args.synthetic, 12, prefix="bench-serve-configs-")
    print(f"catalogue: {source}; load average {os.getloadavg()}", flush=True)
    payloads = [(p.name, p.read_bytes()) for p in scenes]
    bare_model = Bare(checkpoint, index_dir, scenes, args.device)
    results: dict[str, list[dict]] = {n: [] for n in names}
    bare = []
    for round_ in range(args.rounds):
        bare.append(bare_model.rate("traced", 1, 2 if args.device == "cpu" else 1, 1, seconds=4.0))
        print(f"round {round_ + 1} bare: {bare[-1][0]:.1f} img/s, {1e3 * bare[-1][1]:.1f} ms CPU/img "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        for name in names:
            root = args.before if name == "before" else None
            results[name].append(run_config(CONFIGS[name], checkpoint, index_dir, payloads, args, root=root))
            last = results[name][-1]
            print(f"round {round_ + 1} {name}: " + "; ".join(
                f"c{c} {last[c]['throughput']:.1f} req/s, {last[c]['server_cpu_per_request_ms']:.1f} ms CPU "
                f"({last[c]['server_kernel_per_request_ms']:.1f} kernel, "
                f"{last[c]['server_minor_faults_per_request']:.0f} faults)"
                for c in levels) + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    print("\n".join(report(results, bare, levels)))
    if args.json:
        args.json.write_text(json.dumps({"bare": bare, "results": results}, indent=2, default=float) + "\n")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
