"""embed-catalog's Pillow loader alone against Pillow alone, with the same number of processes, in one run.

    python -m bench.bench_pillow_loader [--n 2000] [--px 256] [--workers W] [--batch 32] [--repeats 3]
                                        [--draft] [--no-dataloader] [--json OUT.json]

On the same generated JPEGs (bench/make_catalogue.py), interleaved `--repeats` times, best of each:
  pillow alone   a process pool reads, hashes, decodes and resizes every image (decode_row) and sends
                 nothing back: what the decoders alone can do on this machine;
  loader         the job's Pillow side (jobs.catalog.pillow_decoders): the same work written into the
                 shared-memory ring, batches assembled in catalogue order, slots released as read;
  dataloader     the previous loader, a torch DataLoader over decode_row with the same workers and the
                 job's old settings (pickled tensors, collate): the comparison the change was made for.
The ratio loader / pillow alone is the figure of merit (target >= 0.8). With as many processes as
cores, the wall-clock rates mostly measure the decoders; what sets a loader's ceiling on a machine with
many cores is the work left to the job's own process, so each contender's CPU time in this process
(every thread, from getrusage) is reported per image, with the rate it would cap the loader at.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from bench.make_catalogue import make_catalogue
from jobs.catalog.catalog_images import decode_row
from jobs.catalog.decode_merge import Merge, plan_tasks
from jobs.catalog.pillow_decoders import PillowDecoders

SIZE = 224
CPU = torch.device("cpu")


def decode_one(job: tuple[str, bool]) -> bool:
    """Read, decode and resize one (path, draft) as the job's Pillow workers do; True when it decoded."""
    path, draft = job
    return decode_row(path, SIZE, draft=draft)[0] is not None


def pillow_alone(paths: list[str], workers: int, *, draft: bool = False) -> float:
    """img/s of `workers` processes decoding every path, results not sent back (pool start included)."""
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        ok = sum(pool.map(decode_one, [(p, draft) for p in paths], chunksize=32))
    if ok != len(paths):
        raise RuntimeError(f"{len(paths) - ok} images failed to decode")
    return len(paths) / (time.perf_counter() - started)


def loader_alone(paths: list[str], workers: int, batch: int, *, device: torch.device = CPU,
                 draft: bool = False) -> float:
    """img/s of the job's Pillow side over every path, each batch taken and released in order (start included).
    On CUDA each batch also lands on the device, as in the job."""
    started = time.perf_counter()
    side = PillowDecoders(paths, SIZE, batch, workers, device=device, draft=draft)
    merge = Merge(plan_tasks(np.arange(len(paths)), batch), [side.name])
    side.start(merge)
    seen = 0
    try:
        for decoded in merge:
            if decoded.ready is not None:
                decoded.ready.synchronize()
            seen += len(decoded.rows)
            decoded.done()
    finally:
        side.close()
    if seen != len(paths):
        raise RuntimeError(f"the loader returned {seen} of {len(paths)} images")
    return len(paths) / (time.perf_counter() - started)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return decode_row(self.paths[i], SIZE)[0]


def dataloader_alone(paths: list[str], workers: int, batch: int) -> float:
    """img/s of the previous loader: a DataLoader with the job's old settings (prefetch 4, default collate)."""
    started = time.perf_counter()
    loader = torch.utils.data.DataLoader(_Rows(paths), batch_size=batch, num_workers=workers, prefetch_factor=4)
    seen = sum(len(images) for images in loader)
    if seen != len(paths):
        raise RuntimeError(f"the DataLoader returned {seen} of {len(paths)} images")
    return len(paths) / (time.perf_counter() - started)


def own_cpu() -> float:
    """CPU seconds of this process, every thread (not its worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(run, n: int) -> tuple[float, float]:
    """(img/s, this process's CPU microseconds per image) of one contender."""
    before = own_cpu()
    rate = run()
    return rate, 1e6 * (own_cpu() - before) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--px", type=int, default=256, help="side of the generated JPEGs")
    ap.add_argument("--workers", type=int, default=None, help="processes for every contender [all cores]")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--draft", action="store_true", help="decode with --jpeg-draft (both contenders)")
    ap.add_argument("--no-dataloader", action="store_true", help="skip the previous loader")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers or cores
    print(f"machine: {platform.machine()} {cores} cores (load avg {os.getloadavg()[0]:.1f}), torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_catalogue(Path(tmp) / "cat", args.n, args.px)
        paths = [str(manifest.parent / p) for p in pq.read_table(manifest).column("image_path").to_pylist()]
        print(f"{args.n} {args.px}-px JPEGs; {workers} processes each; batch {args.batch}"
              + ("; --jpeg-draft" if args.draft else ""))
        runs = {"pillow alone": lambda: pillow_alone(paths, workers, draft=args.draft),
                "loader": lambda: loader_alone(paths, workers, args.batch, draft=args.draft)}
        if not args.no_dataloader:
            runs["dataloader"] = lambda: dataloader_alone(paths, workers, args.batch)
        rates: dict[str, list[float]] = {k: [] for k in runs}
        cpu_us: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.repeats):
            for name, run in runs.items():
                rate, us = timed(run, len(paths))
                rates[name].append(rate)
                cpu_us[name].append(us)
            print(f"  repeat {r + 1}: " + "; ".join(f"{k} {v[-1]:.0f} img/s ({cpu_us[k][-1]:.0f} us/img here)"
                                                    for k, v in rates.items()), flush=True)
    best = {k: max(v) for k, v in rates.items()}
    least = {k: min(v) for k, v in cpu_us.items()}
    ratio = best["loader"] / best["pillow alone"]
    paired = sorted(a / b for a, b in zip(rates["loader"], rates["pillow alone"], strict=True))
    print(f"pillow alone {best['pillow alone']:.0f} img/s; loader {best['loader']:.0f} img/s: "
          f"ratio {ratio:.2f} (target >= 0.8: {'met' if ratio >= 0.8 else 'not met'}); paired "
          f"{', '.join(f'{p:.2f}' for p in paired)}")
    if "dataloader" in best:
        print(f"previous loader (DataLoader) {best['dataloader']:.0f} img/s: ratio "
              f"{best['dataloader'] / best['pillow alone']:.2f}")
    for name in ("loader", "dataloader"):
        if name in least:
            print(f"{name}: {least[name]:.0f} CPU us per image in the job's process (every thread): a ceiling of "
                  f"{1e6 / max(least[name], 1e-9):,.0f} img/s however many workers decode")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "px": args.px, "workers": workers, "batch": args.batch,
                                         "cores": cores, "rates": rates, "best": best, "ratio": ratio,
                                         "own_cpu_us_per_image": cpu_us}, indent=1))


if __name__ == "__main__":
    main()
