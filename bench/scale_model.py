"""Cost model for 100M and 1B products, fitted to bench_scale.py results (memory, disk, build hours, latency).

    python -m bench.scale_model docs/scale-results/scale-1M.json docs/scale-results/scale-10M.json [--k 1,8,64]

Per-vector constants come from the largest run (its index type is the one the selection picks from 10M on:
IVF-PQ64 with the float16 re-rank); anonymous memory is fitted as a + b*N over the runs; build phases scale as

    write (float16 copy + ids)        ~ N                      one process (driver)
    train (k-means)                   ~ n_train * nlist        one process, all its cores
    add (+ exact ground truth)        ~ N * nlist / K          K workers (the ground truth ~ N too)
    tune (recall, category params)    ~ constant               one process

with nlist = index.select.nlist_for(N) (4*sqrt(N), a power of two, capped at 65,536) and n_train = 40 * nlist.
Query latency (warm, one thread) is taken as the measured latency times (probed rows / probed rows at the
fit point) for the list scan, which dominates once lists are long.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from index.select import nlist_for

TARGETS = (100_000_000, 1_000_000_000)


def fit(runs: list[dict], mode: str | None = None) -> dict:
    """Constants from the largest run's `mode` build (default: its one-process build, else its first)."""
    big = max(runs, key=lambda r: r["meta"]["n"])
    n = big["meta"]["n"]
    mode = mode or ("single" if "single" in big["builds"] else next(iter(big["builds"])))
    b = big["builds"][mode]
    ph = b["phases"]
    # One worker's add: a parallel build's groups run one after another (their own wall times summed).
    add_one_worker = sum(ph["group_seconds"]) if ph.get("groups", 1) > 1 else ph["add_seconds"]
    nlist = nlist_for(n)
    disk = b["disk_bytes"]
    per_vec = {k: v / n for k, v in disk.items() if k != "info.json"}
    anon = [(r["meta"]["n"], r["builds"].get("ondisk", r["builds"].get(mode) or next(iter(r["builds"].values())))
             ["anon_load_mb"]) for r in runs]
    (n0, a0), (n1, a1) = anon[0], anon[-1]
    slope = (a1 - a0) / (n1 - n0) if n1 != n0 else 0.0
    sharded = big["builds"].get("sharded", {}).get("phases", {})
    return {"n": n, "mode": mode, "nlist": nlist, "per_vec_bytes": per_vec, "anon_mb": (a0 - slope * n0, slope),
            "write_s_per_vec": ph["write_f16_ids_seconds"] / n,
            "train_s_per_unit": ph["train_seconds"] / (40 * nlist * nlist),
            "add_s_per_vec_nlist": add_one_worker / (n * nlist),
            "add_speedup_k2": (ph["add_seconds"] / sharded["add_seconds"])
            if sharded.get("add_seconds") and mode == "single" else None,
            "tune_s": ph["tune_seconds"], "warm_ms": b["warm_p50_ms"], "warm_p99_ms": b["warm_p99_ms"]}


def predict(m: dict, n: int, ks: list[int]) -> dict:
    nlist = nlist_for(n)
    disk = sum(v * n for v in m["per_vec_bytes"].values())
    a, slope = m["anon_mb"]
    out = {"n": n, "nlist": nlist, "disk_gb": disk / 1e9,
           "index_gb": sum(v * n for k, v in m["per_vec_bytes"].items() if k.startswith("index")) / 1e9,
           "anon_gb": (a + slope * n) / 1e3,
           "write_h": m["write_s_per_vec"] * n / 3600, "train_h": m["train_s_per_unit"] * 40 * nlist * nlist / 3600,
           "tune_h": m["tune_s"] / 3600,
           # the same nprobe: the rows scanned grow with the list length n / nlist
           "warm_ms": m["warm_ms"] * ((n / nlist) / (m["n"] / m["nlist"]))}
    add_1 = m["add_s_per_vec_nlist"] * n * nlist
    out["add_h"] = {k: add_1 / k / 3600 for k in ks}
    out["total_h"] = {k: out["write_h"] + out["train_h"] + out["tune_h"] + out["add_h"][k] for k in ks}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--k", default="1,8,64")
    args = ap.parse_args()
    runs = sorted((json.loads(p.read_text()) for p in args.results), key=lambda r: r["meta"]["n"])
    ks = [int(k) for k in args.k.split(",")]
    m = fit(runs)
    print(f"fitted on N={m['n']:,} ({m['mode']} build, nlist {m['nlist']}): bytes/vector on disk "
          + ", ".join(f"{k} {v:.1f}" for k, v in m["per_vec_bytes"].items())
          + f"; anonymous memory at load {m['anon_mb'][0]:.0f} MB + {m['anon_mb'][1] * 1e6:.1f} MB per 1M rows"
          + (f"; add speed-up with 2 workers {m['add_speedup_k2']:.2f}x" if m["add_speedup_k2"] else ""))
    header = ("| N | nlist | disk (index / all) | anon memory loaded | build hours: write + train + tune + add on "
              + " / ".join(f"K={k}" for k in ks) + " | warm query (same nprobe) |")
    print(header)
    print("|---|---|---|---|---|---|")
    for n in TARGETS:
        p = predict(m, n, ks)
        adds = " / ".join(f"{p['total_h'][k]:.1f}" for k in ks)
        print(f"| {n:,} | {p['nlist']:,} | {p['index_gb']:.0f} GB / {p['disk_gb']:.0f} GB | {p['anon_gb']:.1f} GB | "
              f"{p['write_h']:.1f} + {p['train_h']:.1f} + {p['tune_h']:.2f} + add -> total {adds} | "
              f"{p['warm_ms']:.1f} ms |")


if __name__ == "__main__":
    main()
