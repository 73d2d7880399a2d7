"""embed-catalog with device decoding against the decode alone and the bare network, both backbones, one run.

    python bench/bench_device_decode.py [--n 4000] [--device cuda] [--batch-size 256] [--workers 14]
                                        [--backbones efficientnet-lite0,resnet50] [--compile]

Per backbone, on the same generated JPEGs (256 px, photo-like) and in the same run:
  decode alone (cpu)    Pillow decode + resize in `--workers` processes (the CPU path's reader)
  decode alone (device) the device path's reader: threads read bytes, one batched decode_jpeg, resize
  bare network          the backbone's forward on pre-decoded uint8 batches (bf16 autocast on CUDA)
  job --decode cpu      `embed_catalog`, steady state (its own images_per_s)
  job --decode gpu      the same with device decoding (and `--compile`: compile time printed apart)
and the ratios the issue sets targets on: job (device) >= 6,000 img/s on one H200 with EfficientNet-Lite0,
and job (device) / decode alone (device) >= 0.8. On a CPU (--device cpu) the "device" path runs
torchvision's CPU decoder: a smoke test of this script, not a measurement of the GPU path.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from bench.bench_embed import bare_rate, make_jpegs  # noqa: E402
from jobs.catalog.catalog_images import decode_row  # noqa: E402
from jobs.catalog.device_decode import read_raw  # noqa: E402
from jobs.catalog.device_engine import prepare, reader_threads  # noqa: E402
from jobs.catalog.embed_catalog import EmbedCatalogConfig, embed_catalog  # noqa: E402
from pipeline.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from pipeline.embedder import build_embedder  # noqa: E402

SIZE = 224


def _decode_one(path: str):
    return decode_row(path, SIZE)[0] is not None


def cpu_decode_rate(paths: list[str], workers: int) -> float:
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        ok = sum(pool.map(_decode_one, paths, chunksize=32))
    assert ok == len(paths)
    return len(paths) / (time.perf_counter() - started)


def device_decode_rate(paths: list[str], device: torch.device, batch: int, threads: int) -> float:
    stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None
    with ThreadPoolExecutor(max_workers=threads) as pool:
        warm = [read_raw(i, p) for i, p in enumerate(paths[:batch])]
        prepare(warm, SIZE, device, pool, stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for start in range(0, len(paths), batch):
            raws = list(pool.map(lambda ip: read_raw(*ip), enumerate(paths[start:start + batch], start)))
            prepare(raws, SIZE, device, pool, stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return len(paths) / (time.perf_counter() - started)


def job_rate(manifest: Path, ckpt: Path, out: Path, **settings) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    return embed_catalog(manifest, ckpt, out, config=EmbedCatalogConfig(shard_size=10_000, **settings),
                         progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="CPU decode processes / device-path reader threads")
    ap.add_argument("--backbones", default="efficientnet-lite0,resnet50")
    ap.add_argument("--compile", action="store_true", help="also time the device-decoding job with torch.compile")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (256 if cuda else 32)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers or max(1, cores - 2)
    threads = reader_threads(args.workers)
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()} {cores} cores (load avg {load:.1f}), torch {torch.__version__}, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        manifest = make_jpegs(tmp / "cat", args.n)
        paths = [str(manifest.parent / p) for p in pq.read_table(manifest).column("image_path").to_pylist()]
        print(f"made {args.n} 256 px JPEGs in {time.perf_counter() - t:.1f} s; batch {batch}, "
              f"{workers} CPU decode processes, {threads} reader threads")
        cpu_dec = cpu_decode_rate(paths, workers)
        dev_dec = device_decode_rate(paths, device, batch, threads)
        print(f"decode alone: cpu (Pillow, {workers} processes) {cpu_dec:.0f} img/s; device {dev_dec:.0f} img/s")
        for name in args.backbones.split(","):
            torch.manual_seed(0)
            ckpt = tmp / f"{name}.pt"
            save_checkpoint(ckpt, build_embedder(categories=["shoes"], backbone=name, backbone_weights="random"),
                            config={})
            model = load_checkpoint(ckpt, device=device).embedder.eval().to(memory_format=torch.channels_last)
            x = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, device=device)
            bare, _ = bare_rate(model.backbone, x, batch, device, total=max(batch * 8, args.n))
            common = dict(batch_size=batch, device=args.device)
            on_cpu = job_rate(manifest, ckpt, tmp / "out", decode="cpu", workers=workers if cuda else None, **common)
            on_dev = job_rate(manifest, ckpt, tmp / "out", decode="gpu", workers=threads, **common)
            rows = [("job --decode cpu", on_cpu), ("job --decode gpu", on_dev)]
            if args.compile:
                rows.append(("job --decode gpu --compile",
                             job_rate(manifest, ckpt, tmp / "out", decode="gpu", workers=threads, compile=True,
                                      **common)))
            print(f"\n{name}: bare network {bare:.0f} img/s (batch {batch}, channels_last"
                  + (", bf16)" if cuda else ")"))
            for label, s in rows:
                compiled = f"; compile + warm-up {s['compile_seconds']:.1f} s apart" if s["compile_seconds"] else ""
                print(f"  {label:<28} {s['images_per_s']:8.0f} img/s steady   job/bare {s['images_per_s'] / bare:.2f}"
                      f"   job/decode-alone(same path) "
                      f"{s['images_per_s'] / (dev_dec if 'gpu' in label else cpu_dec):.2f}{compiled}")
            if name == "efficientnet-lite0":
                rate = on_dev["images_per_s"]
                print(f"  targets (H200, EfficientNet-Lite0): device job {rate:.0f} img/s vs 6,000 -> "
                      f"{'met' if rate >= 6000 else 'not met'}; device job / device decode {rate / dev_dec:.2f} "
                      f"vs 0.8 -> {'met' if rate / dev_dec >= 0.8 else 'not met'}"
                      + ("" if cuda else "  (a CPU run: the GPU figures are still to be measured)"))


if __name__ == "__main__":
    main()
