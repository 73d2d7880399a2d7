"""Loopback load test of `ctl serve` beside the bare backbone's best batched throughput, in one run.

    python -m bench.bench_serve [--requests 200] [--duration 60] [--concurrency 1,4,16,64]
                                [--endpoint look|retrieve] [--rss-requests 1000] [--device cpu]
                                [--workers N --threads N --max-batch N --max-wait-ms MS --queue-size N]

(1) bare: the backbone's forward alone on pre-decoded, pre-resized uint8 224 px scenes (inference_mode,
    channels_last, the served checkpoint's own backbone), eager and as the traced graph the service runs,
    at batch 1, 4 and 16, both as one thread per core in parallel and as one forward on every core; the
    best images/s is the baseline, measured again (that layout) right before each concurrency level.
(2) served: `ctl serve --port 0` in a process of its own on the same artefacts; an asyncio + httpx client
    posts held-out scene JPEGs to /v1/look (or /v1/retrieve) with `concurrency` requests in flight, for a
    fixed request count or duration, whichever ends first, at each concurrency. A 503 (full queue) is
    counted and its client waits min(Retry-After, 1 s). Throughput counts 200s only.
(3) memory: the server's RSS after a warm-up at the highest concurrency (every batch size allocated) and
    after at least `--rss-requests` requests.

Targets, printed as ratios: throughput at every concurrency >= 0.85 x the bare best; p99 at concurrency
16 <= 1.5 x (16 / throughput at 16); no 5xx but the 503s of a full queue; RSS growth < 50 MB; on a GPU,
throughput at concurrency 64 >= 4 x that at concurrency 1. The client runs on the same machine (and,
on 2 cores, on the same cores) as the server: its CPU time is part of what the ratios pay.

Artefacts: the embedded sample's (`make demo`) when present and matching, else a synthetic catalogue
(see bench/bench_query.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.bench_query import find_artifacts
from pipeline.images import image_to_tensor, load_image
from retrieval.retriever import Retriever
from service.settings import usable_cores

ROOT = Path(__file__).resolve().parents[1]   # the repository root: the working folder of the child processes

TARGET_THROUGHPUT = 0.85
TARGET_P99 = 1.5
TARGET_RSS_MB = 50
TARGET_GPU_SCALING = 4.0


# -- (1) the bare backbone ---------------------------------------------------------------------------

def bare_rate(backbone, x: torch.Tensor, *, parallel: int, threads: int, seconds: float) -> tuple[float, float]:
    """(images per second, CPU seconds per image) of `parallel` threads each running forwards of batch x with
    `threads` torch threads."""
    counts = [0] * parallel
    barrier = threading.Barrier(parallel + 1)
    stop = [time.perf_counter() + 3600]

    def run(i):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            backbone(x)                                  # warm: kernels and buffers for this shape
            barrier.wait()
            while time.perf_counter() < stop[0]:
                backbone(x)
                counts[i] += x.shape[0]
            if x.is_cuda:
                torch.cuda.synchronize()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(parallel)]
    for w in workers:
        w.start()
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    stop[0] = start + seconds
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return sum(counts) / wall, cpu / max(1, sum(counts))


class Bare:
    """The served checkpoint's backbone in this process, on held-out scenes decoded and resized once."""

    def __init__(self, checkpoint: Path, index_dir: Path, scenes: list[Path], device: str):
        eager = Retriever.load(checkpoint=checkpoint, index_dir=index_dir, device=device)
        traced = eager.with_index(eager.index)
        traced.trace_backbone()                     # the graph the service runs by default (--trace)
        self.forwards = {"eager": eager.embedder.backbone, "traced": traced.scene_backbone}
        self.device = device
        self.one = torch.stack([image_to_tensor(load_image(p), eager.input_size) for p in scenes])
        cores = usable_cores()
        self.layouts = [(cores, 1), (1, cores)] if device == "cpu" else [(1, 1)]
        self.batches = (1, 4, 16) if device == "cpu" else (1, 16, 64, 256)

    def rate(self, kind: str, batch: int, parallel: int, threads: int, seconds: float) -> tuple[float, float]:
        x = self.one[torch.arange(batch) % len(self.one)].to(self.device).contiguous(memory_format=torch.channels_last)
        return bare_rate(self.forwards[kind], x, parallel=parallel, threads=threads, seconds=seconds)

    def sweep(self, seconds: float) -> dict:
        """Every forward (eager, traced) x batch x layout; the best images/s is the baseline."""
        rates = {}
        for kind in self.forwards:
            for batch in self.batches:
                for parallel, threads in self.layouts:
                    rate, cpu = self.rate(kind, batch, parallel, threads, seconds)
                    rates[(kind, batch, parallel, threads)] = (rate, cpu)
                    print(f"  bare {kind:6} forward batch {batch:>3}, {parallel} in parallel x {threads} thread(s): "
                          f"{rate:7.1f} img/s, {1e3 * cpu:6.1f} ms CPU/img   (load {os.getloadavg()[0]:.1f})",
                          flush=True)
        best = max(rates, key=lambda key: rates[key][0])
        return {"rates": {f"{k} batch {b}, {p} x {t} thread(s)": r for (k, b, p, t), r in rates.items()},
                "best": rates[best][0], "best_cpu_per_image": min(c for _, c in rates.values()), "best_layout": best}


# -- (2) the server ---------------------------------------------------------------------------------------

def start_server(checkpoint: Path, index_dir: Path, device: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "jobs.cli", "serve", "--port", "0", "--device", device, "--index-dir",
           str(index_dir), "--checkpoint", str(checkpoint), "--examples", "none", "--watch-interval", "0",
           "--no-access-log", "--log-level", "warning", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    while True:
        line = lines.get(timeout=180)
        sys.stdout.write("  server: " + line)
        match = re.match(r"serving (http://\S+) ", line)
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"ctl serve exited with {proc.returncode}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, payloads: list[tuple[str, bytes]], *, concurrency: int, requests: int, duration: float,
               endpoint: str, params: dict) -> dict:
    """Closed loop: `concurrency` clients, each posting the next scene as soon as its previous answer is in."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    records: list[tuple[float, object, str | None]] = []
    issued = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(600.0)) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def client_loop():
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                name, data = payloads[issued % len(payloads)]
                issued += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(endpoint, params=params, files={"image": (name, data, "image/jpeg")})
                    status, timing = r.status_code, r.headers.get("server-timing")
                except httpx.HTTPError as exc:
                    r, status, timing = None, f"error: {type(exc).__name__}", None
                records.append((time.perf_counter() - t0, status, timing))
                if status == 503:
                    await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), 1.0))
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = [s for s, status, _ in records if status == 200]
    statuses: dict[str, int] = {}
    for _, status, _ in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    stages: dict[str, list[float]] = {}
    for _, status, timing in records:
        for part in (timing or "").split(", ") if status == 200 else ():
            name, _, dur = part.partition(";dur=")
            stages.setdefault(name, []).append(float(dur))
    q = np.percentile(ok, [50, 95, 99]) * 1e3 if ok else [float("nan")] * 3
    return {"concurrency": concurrency, "requests": len(records), "wall_s": wall, "ok": len(ok),
            "throughput": len(ok) / wall, "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2], "statuses": statuses,
            "server_stage_ms": {k: statistics.mean(v) for k, v in stages.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level (at least 4 x it)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per concurrency level at most")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--endpoint", choices=["look", "retrieve"], default="look")
    ap.add_argument("--rss-requests", type=int, default=1000)
    ap.add_argument("--bare-seconds", type=float, default=4.0, help="seconds per bare-forward layout")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="a synthetic catalogue of N products")
    for flag in ("--workers", "--threads", "--max-batch", "--max-wait-ms", "--queue-size"):
        ap.add_argument(flag, default=None, help=f"passed to ctl serve {flag}")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    extra = [x for flag in ("workers", "threads", "max_batch", "max_wait_ms", "queue_size")
             if getattr(args, flag) is not None for x in (f"--{flag.replace('_', '-')}", getattr(args, flag))]

    checkpoint, index_dir, scenes, source, tmp = find_artifacts(args.synthetic, 12, prefix="bench-serve-")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    result = {"source": source, "machine": f"{cpu}, {usable_cores()} usable cores, torch {torch.__version__}",
              "device": args.device, "endpoint": f"/v1/{args.endpoint}", "load_before": os.getloadavg()}
    print(f"catalogue: {source}\nmachine: {result['machine']}; load average {os.getloadavg()}", flush=True)
    proc = None
    try:
        print("(1) bare backbone forward", flush=True)
        bare = Bare(checkpoint, index_dir, scenes, args.device)
        result["bare"] = bare.sweep(args.bare_seconds)
        best_layout = result["bare"]["best_layout"]
        print(f"  best: {result['bare']['best']:.1f} img/s ({best_layout[0]}, batch {best_layout[1]}, "
              f"{best_layout[2]} x {best_layout[3]} thread(s)); measured again beside each concurrency level",
              flush=True)

        print(f"(2) ctl serve {' '.join(extra) or '(default settings)'}", flush=True)
        proc, url = start_server(checkpoint, index_dir, args.device, extra)
        result["server"] = httpx.get(f"{url}/readyz", timeout=60).json()
        payloads = [(p.name, p.read_bytes()) for p in scenes]
        params = {"k": 4} if args.endpoint == "look" else {"k": 20}
        endpoint = f"/v1/{args.endpoint}"
        # Warm-up at the highest concurrency: every batch size and buffer the run will use is allocated
        # before the first RSS reading, so that RSS growth measures what stays, not what warms up.
        warm = max(levels)
        asyncio.run(load(url, payloads, concurrency=warm, requests=warm, duration=300, endpoint=endpoint,
                         params=params))
        rss_before = rss_mb(proc.pid)
        total = warm
        levels_out = []
        for c in levels:
            base, base_cpu = bare.rate(*best_layout, seconds=args.bare_seconds)   # the baseline, right now
            cpu0 = cpu_seconds(proc.pid)
            r = asyncio.run(load(url, payloads, concurrency=c, requests=max(args.requests, 4 * c),
                                 duration=args.duration, endpoint=endpoint, params=params))
            r["server_cpu_per_request_ms"] = 1e3 * (cpu_seconds(proc.pid) - cpu0) / max(1, r["ok"])
            r["bare"], r["bare_cpu_per_image_ms"] = base, 1e3 * base_cpu
            r["ratio"] = r["throughput"] / base
            r["cpu_ratio"] = r["bare_cpu_per_image_ms"] / r["server_cpu_per_request_ms"]
            r["load_after"] = os.getloadavg()[0]
            total += r["requests"]
            levels_out.append(r)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["server_stage_ms"].items())
            print(f"  concurrency {c:>3}: {r['throughput']:6.1f} req/s, bare now {base:5.1f} img/s: x{r['ratio']:.2f}; "
                  f"CPU {r['server_cpu_per_request_ms']:.0f} ms/req vs bare {r['bare_cpu_per_image_ms']:.0f} ms/img: "
                  f"x{r['cpu_ratio']:.2f}; p50 {r['p50_ms']:.0f}  p95 {r['p95_ms']:.0f}  p99 {r['p99_ms']:.0f} ms; "
                  f"{r['statuses']}  [server ms: {stages}]  load {r['load_after']:.1f}", flush=True)
        result["levels"] = levels_out
        if total < args.rss_requests:
            asyncio.run(load(url, payloads, concurrency=4, requests=args.rss_requests - total, duration=3600,
                             endpoint=endpoint, params=params))
            total = args.rss_requests
        rss_after = rss_mb(proc.pid)
        result["rss"] = {"before_mb": rss_before, "after_mb": rss_after, "requests": total}
        print(f"(3) server RSS {rss_before:.0f} MB after the warm-up, {rss_after:.0f} MB after {total} requests",
              flush=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    result["load_after"] = os.getloadavg()
    checks = []
    for r in result["levels"]:
        checks.append((r["ratio"] >= TARGET_THROUGHPUT, f"throughput at concurrency {r['concurrency']}: "
                       f"x{r['ratio']:.2f} of the bare best measured just before (target >= {TARGET_THROUGHPUT}); "
                       f"CPU time per image x{r['cpu_ratio']:.2f}"))
    at16 = next((r for r in result["levels"] if r["concurrency"] == 16), None)
    if at16 and at16["throughput"] > 0:
        bound = 16 / at16["throughput"] * 1e3
        checks.append((at16["p99_ms"] <= TARGET_P99 * bound, f"p99 at concurrency 16: x{at16['p99_ms'] / bound:.2f} "
                       f"of 16 / throughput = {bound:.0f} ms (target <= {TARGET_P99})"))
    bad = {s: n for r in result["levels"] for s, n in r["statuses"].items() if s not in ("200", "503")}
    checks.append((not bad, f"5xx other than 503 (and client errors): {bad or 'none'}"))
    growth = result["rss"]["after_mb"] - result["rss"]["before_mb"]
    checks.append((growth < TARGET_RSS_MB, f"RSS growth over {result['rss']['requests']} requests: {growth:+.1f} MB "
                   f"(target < {TARGET_RSS_MB} MB)"))
    if args.device != "cpu":
        by_c = {r["concurrency"]: r["throughput"] for r in result["levels"]}
        if 1 in by_c and 64 in by_c:
            checks.append((by_c[64] >= TARGET_GPU_SCALING * by_c[1], f"GPU: throughput at 64 / at 1 = "
                           f"x{by_c[64] / by_c[1]:.2f} (target >= {TARGET_GPU_SCALING})"))
    print(f"\nload average {result['load_before']} before, {result['load_after']} after")
    for ok, line in checks:
        print(f"{'PASS' if ok else 'MISS'}: {line}")
    result["checks"] = [{"ok": ok, "what": line} for ok, line in checks]
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
