"""The front end's ceiling: what one `ctl serve` process answers when the model's forward costs nothing.

    python -m bench.bench_frontend [--synthetic N] [--endpoint retrieve|look] [--device cpu|cuda]
                                   [--concurrency 1,16,64] [--requests 2000] [--duration 30] [--clients 1] [--json FILE]

Issue 18 asks whether one Python process can feed an accelerator at 1,500 requests/s or needs several front-end
processes. This measures the front end alone, on any machine: `ctl serve` itself (the same command line, routes,
middleware, uvicorn with its C loop and parser, the executor with its decode pool, stage 1 and stage 2 over the
real index, the JSON) in a process of its own, with one change: `Retriever.encode_pixels` returns a scene
encoded once at start instead of running the backbone, as if the forward took no time. Clients post held-out
scene JPEGs (bench/bench_serve.py's closed loop) at each concurrency level.

Reported per level: requests/s, the server's CPU per request (all its threads, /proc/PID/stat) and its main
thread's (/proc/PID/task/PID/stat: the event loop, which holds the GIL for HTTP, multipart, routing and JSON),
p50/p99 and the client's CPU. The event loop is one thread: 1,000 / its ms per request bounds the requests/s of
one process whatever the device (the decode pool and the stages run on other threads, partly without the GIL).
On a machine with few cores the clients share them: the measured requests/s is then the smaller figure, the
bound the one that carries over to a machine with cores to spare.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
from pathlib import Path

import torch

import jobs.serve
from bench.bench_query import find_artifacts
from bench.bench_serve import (
    TARGET_GPU_RATE,
    add_serve_options,
    cpu_seconds,
    load,
    main_threads_cpu_seconds,
    serve_flags,
    start_server,
    wait_ready,
)
from retrieval.retriever import Retriever
from service.settings import usable_cores

CHILD = "serve-without-forward"


def serve_without_forward(argv: list[str]) -> None:
    """`ctl serve ARGV` with Retriever.encode_pixels answering from one scene encoded at load (no backbone)."""
    class ForwardFree(Retriever):
        @classmethod
        def load(cls, *args, **kwargs):
            retriever = Retriever.load(*args, **kwargs)
            grey = torch.full((1, 3, retriever.input_size, retriever.input_size), 128, dtype=torch.uint8)
            f_s, f_i, presence = retriever.encode_pixels(grey)

            def encode_pixels(pixels: torch.Tensor, *, pad_to: int | None = None):
                n = int(pixels.shape[0])
                return (f_s.expand(n, -1).clone(), f_i.expand(n, -1, -1).clone(),
                        None if presence is None else presence.expand(n, -1).clone())
            retriever.encode_pixels = encode_pixels
            return retriever

    jobs.serve.Retriever = ForwardFree
    jobs.serve.serve_command.main(argv, prog_name="ctl serve (forward-free)")


def machine_idle_seconds() -> float:
    """Idle + iowait CPU seconds of the whole machine since boot (/proc/stat), every core together."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="a synthetic catalogue of N products")
    ap.add_argument("--endpoint", choices=["look", "retrieve"], default="retrieve")
    ap.add_argument("--device", default="cpu", help="the server's device: its defaults (batching, threads) and "
                                                  "where the heads and stage 2 run")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per concurrency level at most")
    ap.add_argument("--clients", type=int, default=1, help="client processes")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    add_serve_options(ap)
    return ap.parse_args(argv)


def measure(url: str, pid: int, payloads, args) -> list[dict]:
    endpoint, params = f"/v1/{args.endpoint}", ({"k": 4} if args.endpoint == "look" else {"k": 20})
    top = max(int(c) for c in args.concurrency.split(","))
    load(url, payloads, concurrency=top, requests=4 * top, duration=60, endpoint=endpoint, params=params,
         clients=args.clients)    # connections, arenas and caches settle first
    levels = []
    for c in [int(c) for c in args.concurrency.split(",")]:
        cpu0, main0, idle0 = cpu_seconds(pid), main_threads_cpu_seconds(pid), machine_idle_seconds()
        r = load(url, payloads, concurrency=c, requests=max(args.requests, 4 * c), duration=args.duration,
                 endpoint=endpoint, params=params, clients=args.clients)
        ok = max(1, r["ok"])
        # idle cores of the whole machine (other processes included), not usable cores minus ours
        r["machine_idle_cores"] = (machine_idle_seconds() - idle0) / r["wall_s"]
        r["server_cpu_per_request_ms"] = 1e3 * (cpu_seconds(pid) - cpu0) / ok
        r["event_loop_cpu_per_request_ms"] = 1e3 * (main_threads_cpu_seconds(pid) - main0) / ok
        # each front end has its event loop: N of them bound N times as many requests/s
        r["event_loops_bound"] = (args.frontends or 1) * 1e3 / r["event_loop_cpu_per_request_ms"]
        r["server_cores_busy"] = r["server_cpu_per_request_ms"] * r["throughput"] / 1e3
        r["client_cores_busy"] = r["client_cpu_per_request_ms"] * r["throughput"] / 1e3
        r["load_after"] = os.getloadavg()[0]
        levels.append(r)
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["server_stage_ms"].items())
        print(f"  concurrency {c:>3}: {r['throughput']:7.1f} req/s; server CPU {r['server_cpu_per_request_ms']:.2f} "
              f"ms/req, event loop(s) {r['event_loop_cpu_per_request_ms']:.2f} ms/req (at most "
              f"{r['event_loops_bound']:,.0f} req/s); p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms; "
              f"{r['statuses']}  [server ms: {stages}]  client CPU {r['client_cpu_per_request_ms']:.2f} ms/req; "
              f"cores busy: server {r['server_cores_busy']:.2f}, clients {r['client_cores_busy']:.2f} of "
              f"{usable_cores()}, idle {r['machine_idle_cores']:.2f}; load {r['load_after']:.1f}", flush=True)
    return levels


def verdict(levels: list[dict], target: float, endpoint: str, frontends: int = 1) -> str:
    """What the levels say about the server's front end: its best requests/s, whether the machine's cores were left
    idle at it (then something serialises the work, the GIL first of all, and more cores would not raise it), and
    the event loops' own bound."""
    top = max(levels, key=lambda r: r["throughput"])
    idle = top["machine_idle_cores"]
    limit = (f"{idle:.2f} of {usable_cores()} cores idle at it: serialised (the GIL), not short of cores"
             if idle > 0.25 else "no core idle at it: short of cores (or shared with other work)")
    loop = min(levels, key=lambda r: r["event_loop_cpu_per_request_ms"])
    who = "one forward-free process" if frontends == 1 else f"{frontends} forward-free front-end processes"
    return (f"{who} answered {top['throughput']:,.0f} requests/s at best (concurrency "
            f"{top['concurrency']}; {limit}); the GPU target for {endpoint} is {target:,.0f}. The event loops alone "
            f"spend {loop['event_loop_cpu_per_request_ms']:.2f} ms a request: at most "
            f"{loop['event_loops_bound']:,.0f} requests/s even with every other part free")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD]:
        serve_without_forward(argv[1:])
        return 0
    args = parse_args(argv)
    checkpoint, index_dir, scenes, source, tmp = find_artifacts(args.synthetic, 12, prefix="bench-frontend-")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    result = {"source": source, "machine": f"{cpu}, {usable_cores()} usable cores, torch {torch.__version__}",
              "endpoint": f"/v1/{args.endpoint}", "load_before": os.getloadavg()}
    print(f"catalogue: {source}\nmachine: {result['machine']}; load average {os.getloadavg()}", flush=True)
    try:
        # --no-trace: no backbone runs, so tracing it would only slow the start
        flags = serve_flags(args)
        print(f"ctl serve {' '.join(flags) or '(default settings)'}, forward-free", flush=True)
        proc, url = start_server(checkpoint, index_dir, args.device, ["--no-trace", *flags],
                                 entry=("bench.bench_frontend", CHILD))
        try:
            result["server"] = wait_ready(url)
            payloads = [(p.name, p.read_bytes()) for p in scenes]
            result["levels"] = measure(url, proc.pid, payloads, args)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    result["verdict"] = verdict(result["levels"], TARGET_GPU_RATE[args.endpoint], result["endpoint"],
                                args.frontends or 1)
    print(result["verdict"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
