"""The sections of bench/gpu_embed.sh: each measures one thing in its own process and writes RESULTS/<name>.json.

    python -m bench.gpu_embed_sections SECTION --results DIR [options]

Sections: env, checkpoint, decode (Pillow alone, the job's Pillow loader alone, the device side alone),
network (the bare backbone, eager or compiled), job (embed_catalog in this process, one --decode mode),
ctl-line (the summary line of a `ctl embed-catalog` run, timed by the shell), agree (per-product cosine
between two embeddings folders); bench/gpu_embed_report.py then prints every result against the
targets and writes them as one JSON. The shell script runs each under `timeout`, so one that fails or hangs costs only
its own figures. On a CPU (--device cpu) every section runs the same code with torchvision's CPU
decoder standing in for nvJPEG: a rehearsal of the script, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import pyarrow.parquet as pq
import torch
import torchvision

from bench.bench_pillow_loader import decode_one
from index.embedding_shards import iter_embeddings, read_manifest, read_metadata
from jobs.catalog.decode_merge import Merge, plan_tasks
from jobs.catalog.device_side import DeviceDecoders, reader_threads
from jobs.catalog.embed_catalog import EmbedCatalogConfig, embed_catalog
from jobs.catalog.embed_job import StaticBatch, compile_backbone, compiled_graphs, forward
from jobs.catalog.local_engine import pillow_workers
from jobs.catalog.pillow_decoders import PillowDecoders
from pipeline.backbones import BackboneWeightsError
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.embedder import build_embedder

ROUND = 2000            # images per round of the Pillow-alone pool (it stops between rounds at its time limit)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write(results: Path, name: str, data: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))
    print(f"   {name}: " + json.dumps({k: v for k, v in data.items() if not isinstance(v, (dict, list))},
                                      default=str), flush=True)


def catalogue_paths(manifest: Path) -> list[str]:
    return [str(manifest.parent / p) for p in pq.read_table(manifest).column("image_path").to_pylist()]


# -- env and checkpoint ----------------------------------------------------------------------------

def section_env(args) -> None:
    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__, "cores": cores(), "cuda": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "load_avg": os.getloadavg()[0], "budget_s": args.budget, "n": args.n, "repeats": args.repeats}
    write(args.results, "env", info)


def section_checkpoint(args) -> None:
    """EfficientNet-Lite0 with ImageNet weights where its packages are there (a fair judge of agreement),
    else with random weights (speed does not depend on them), else ResNet-50 (random weights; said so)."""
    torch.manual_seed(0)
    embedder = None
    for backbone, weights in (("efficientnet-lite0", "imagenet"), ("efficientnet-lite0", "random"),
                              ("resnet50", "random")):
        try:
            embedder = build_embedder(categories=["shoes"], backbone=backbone, backbone_weights=weights)
            break
        except (BackboneWeightsError, ImportError, OSError) as exc:
            print(f"   {backbone} ({weights} weights) unavailable: {exc}", flush=True)
    save_checkpoint(args.out, embedder, config={})
    write(args.results, "checkpoint", {"backbone": backbone, "weights": weights})


# -- decode alone ----------------------------------------------------------------------------------

def pillow_alone(paths: list[str], workers: int, seconds: float) -> dict:
    """`workers` processes decode (decode_row) and send nothing back, in rounds until `seconds` have passed."""
    started = time.perf_counter()
    done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode_one, [(p, False) for p in paths[:workers]]))        # start the processes
        started = time.perf_counter()
        while done < len(paths) and time.perf_counter() - started < seconds:
            part = paths[done:done + ROUND]
            if sum(pool.map(decode_one, [(p, False) for p in part], chunksize=16)) != len(part):
                raise RuntimeError("an image failed to decode")
            done += len(part)
    return {"images": done, "seconds": time.perf_counter() - started,
            "img_s": done / (time.perf_counter() - started), "workers": workers}


def side_alone(side, paths: list[str], batch: int, seconds: float) -> dict:
    """One decode side over the paths through the job's merge, each batch landed and released, until
    `seconds` have passed (the side's start-up not counted: its first batch is left out)."""
    merge = Merge(plan_tasks(np.arange(len(paths)), batch), [side.name])
    side.start(merge)
    done, started = 0, None
    try:
        for decoded in merge:
            if decoded.ready is not None:
                decoded.ready.synchronize()
            decoded.done()
            if started is None:
                started = time.perf_counter()
                continue
            done += len(decoded.rows) + len(decoded.rejects)
            if time.perf_counter() - started >= seconds:
                break
    finally:
        merge.close()
        side.close()
    elapsed = time.perf_counter() - started if started else float("nan")
    return {"images": done, "seconds": elapsed, "img_s": done / elapsed if done else 0.0}


def section_decode(args) -> None:
    device = torch.device(args.device)
    paths = catalogue_paths(args.manifest)
    workers = pillow_workers(args.workers, device)
    threads = reader_threads(None)
    out = {"px": args.px, "batch": args.batch, "workers": workers, "reader_threads": threads}
    out["pillow_alone"] = pillow_alone(paths, workers, args.seconds)
    out["loader_alone"] = side_alone(PillowDecoders(paths, args.size, args.batch, workers, device=device),
                                     paths, args.batch, args.seconds)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out["device_alone"] = side_alone(DeviceDecoders(paths, args.size, device, threads), paths, args.batch,
                                     args.seconds)
    out["loader_over_pillow"] = out["loader_alone"]["img_s"] / out["pillow_alone"]["img_s"]
    write(args.results, f"decode_{args.px}", out)


# -- the network -----------------------------------------------------------------------------------

def section_network(args) -> None:
    device = torch.device(args.device)
    embedder = load_checkpoint(args.ckpt, device=device).embedder.eval().to(memory_format=torch.channels_last)
    out = {"batch": args.batch, "compile": args.compile}
    if args.compile:
        out["compile_seconds"] = compile_backbone(embedder, device, args.size, args.batch)
        graphs = compiled_graphs()
    x = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
    static = StaticBatch(args.batch) if args.compile else None
    with torch.inference_mode():
        for _ in range(3):
            forward(embedder, x, device, static)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started, n = time.perf_counter(), 0
        while time.perf_counter() - started < args.seconds:
            forward(embedder, x, device, static)
            n += args.batch
            if device.type == "cuda" and n % (args.batch * 8) == 0:
                torch.cuda.synchronize()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out["img_s"] = n / (time.perf_counter() - started)
    if args.compile:
        out["recompiles"] = compiled_graphs() - graphs
    write(args.results, "network_compiled" if args.compile else "network", out)


# -- the job ---------------------------------------------------------------------------------------

class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def section_job(args) -> None:
    capture = _Capture()
    log = logging.getLogger("jobs.catalog.local_engine")
    log.addHandler(capture)
    log.setLevel(logging.INFO)
    shutil.rmtree(args.out, ignore_errors=True)
    config = EmbedCatalogConfig(shard_size=10_000, batch_size=args.batch, workers=args.workers, device=args.device,
                                decode=args.decode, compile=args.compile,
                                image_size=None if args.size == 224 else args.size)
    summary = embed_catalog(args.manifest, args.ckpt, args.out, config=config, progress=False)
    split = next((r.decode_split for r in capture.records if hasattr(r, "decode_split")), {})
    recompiles = sum(getattr(r, "recompiles", 0) for r in capture.records)
    out = {"tag": args.tag, "px": args.px, "decode": args.decode, "compile": args.compile,
           "img_s": summary["images_per_s"], "seconds": summary["seconds"],
           "compile_seconds": summary["compile_seconds"], "embedded": summary["embedded"],
           "rejected": summary["rejected"], "split": split, "recompiles": recompiles,
           "workers": pillow_workers(args.workers, torch.device(args.device))}
    write(args.results, f"job_{args.tag}", out)


LINE = re.compile(r"embedded (\d+), rejected (\d+).*?; ([\d.]+) s, ([\d.]+) img/s on (\S+) "
                  r"\((\w+) engine, (\w+) decoding\)(?:; compile and warm-up ([\d.]+) s)?")


def section_ctl_line(args) -> None:
    """The `ctl embed-catalog` summary line (its own steady-state img/s) and the process's wall time."""
    text = args.log.read_text()
    match = LINE.search(text)
    if match is None:
        raise SystemExit(f"no summary line in {args.log}: {text[-500:]!r}")
    embedded, rejected, seconds, rate = int(match[1]), int(match[2]), float(match[3]), float(match[4])
    write(args.results, f"ctl_{args.tag}", {
        "embedded": embedded, "rejected": rejected, "job_seconds": seconds, "img_s": rate, "device": match[5],
        "decode": match[7], "wall_seconds": args.wall, "end_to_end_img_s": (embedded + rejected) / args.wall,
        "startup_seconds": args.wall - seconds})


# -- agreement -------------------------------------------------------------------------------------

def section_agree(args) -> None:

    def by_id(folder: Path) -> dict[str, np.ndarray]:
        manifest = read_manifest(folder)
        ids = read_metadata(manifest, ["product_id"]).column("product_id").to_pylist()
        return dict(zip(ids, np.concatenate([block for _, block in iter_embeddings(manifest)]), strict=True))

    a, b = by_id(args.a), by_id(args.b)
    common = sorted(a.keys() & b.keys())
    x = np.stack([a[i] for i in common]).astype(np.float64)
    y = np.stack([b[i] for i in common]).astype(np.float64)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    write(args.results, f"agree_{args.tag}", {"n": len(common), "only_one_side": len(a.keys() ^ b.keys()),
                                              "min": float(cos.min()), "mean": float(cos.mean()),
                                              "below_0999": int((cos < 0.999).sum())})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["env", "checkpoint", "decode", "network", "job", "ctl-line", "agree"])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--size", type=int, default=224, help="network input size (smaller: the job's hidden "
                                                         "--image-size, for CPU rehearsals)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=10.0, help="time limit of one decode contender / network run")
    ap.add_argument("--decode", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--log", type=Path)
    ap.add_argument("--wall", type=float)
    ap.add_argument("--a", type=Path)
    ap.add_argument("--b", type=Path)
    ap.add_argument("--budget", type=float, default=480)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    {"env": section_env, "checkpoint": section_checkpoint, "decode": section_decode, "network": section_network,
     "job": section_job, "ctl-line": section_ctl_line, "agree": section_agree}[args.section](args)


if __name__ == "__main__":
    main()
