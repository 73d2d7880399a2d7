"""embed-catalog throughput against the bare backbone forward on the same images, in the same run.

    python -m bench.bench_embed [--n 256] [--repeats 3] [--sweep] [--device cpu|cuda] [--backbone NAME]
                                [--manifest catalog.parquet] [--batch-size B] [--workers W]
                                [--batch-sweep 32,16,8,4] [--graph-compare]

(1) bare: the backbone's forward on pre-decoded uint8 tensors, the job's batch (4 on CPU, 256 on CUDA), channels_last,
    inference_mode (bf16 autocast on CUDA) -- the rate no pipeline over this network can beat;
(2) job: ``embed_catalog`` on the same JPEGs, with its defaults, end to end (catalogue read,
    checkpoint load, worker start, decode, resize, forward, heads, parquet writes) and its steady
    state (the loop alone). The ratio job / bare is the figure of merit (target >= 0.9 on 2 CPU cores).
The two are interleaved `--repeats` times and the best of each is reported: other processes on a
shared machine only ever slow a measurement down. `--sweep` also times other worker counts; `--batch-sweep`
times the bare forward and the job at each batch size given, interleaved, against the default batch;
`--graph-compare` times the bare forward and the job with the backbone eager (`--no-trace`) and traced (`--trace`),
interleaved, and compares the two jobs' embeddings.
CPU seconds per image (this process and its DataLoader workers, from getrusage) are reported too:
on a machine shared with other jobs the wall-clock rates mostly measure the share of the cores the
scheduler gave each run (more processes get a bigger share), while CPU cost per image does not.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from common import defaults
from jobs.catalog.embed_catalog import EmbedCatalogConfig, embed_catalog
from jobs.data.catalog_manifest import read_catalog
from jobs.workers import default_workers
from pipeline.backbones import BACKBONES, traced_backbone
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.embedder import build_embedder
from pipeline.images import image_to_tensor, load_image

SAMPLE_CATALOG = Path("data/sample/catalog.parquet")


def make_jpegs(root: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    """n photo-like JPEGs (smooth colour fields plus grain, ~15-25 KB each) and their manifest."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.int16)
        grain = rng.normal(0, 6, (size, size, 3))
        Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8)).save(root / "img" / f"{i}.jpg", quality=90)
    table = pa.table({"product_id": [f"p{i}" for i in range(n)], "image_path": [f"img/{i}.jpg" for i in range(n)],
                      "category": ["shoes"] * n})
    pq.write_table(table, root / "catalog.parquet")
    return root / "catalog.parquet"


def cpu_seconds() -> float:
    """User+system CPU time of this process and its finished children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bare_rate(backbone, tensors: torch.Tensor, batch: int, device: torch.device, total: int) -> tuple[float, float]:
    """Forward `total` images in batches, cycling through the decoded `tensors` (already on the device).
    Returns (img/s, CPU ms per image)."""
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    starts = [(i * batch) % len(tensors) for i in range(max(1, total // batch))]
    batches = [tensors[i:i + batch] for i in starts]
    with torch.inference_mode(), autocast:
        backbone(batches[0].contiguous(memory_format=torch.channels_last))       # warm-up
        if cuda:
            torch.cuda.synchronize()
        t, c = time.perf_counter(), cpu_seconds()
        for x in batches:
            backbone(x.contiguous(memory_format=torch.channels_last))
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t, cpu_seconds() - c
    n = sum(len(x) for x in batches)
    return n / wall, 1e3 * cpu / n


def job_rate(manifest: Path, ckpt: Path, out: Path, **kw) -> tuple[float, float, float]:
    """Returns (end-to-end img/s, steady-state img/s, CPU ms per image end to end)."""
    shutil.rmtree(out, ignore_errors=True)
    c = cpu_seconds()
    s = embed_catalog(manifest, ckpt, out, config=EmbedCatalogConfig(shard_size=10_000, **kw), progress=False)
    cpu = cpu_seconds() - c
    assert s["embedded"] + s["rejected"] == s["n_input"] and s["processed"] == s["n_input"]
    return s["processed"] / s["seconds"], s["images_per_s"], 1e3 * cpu / s["processed"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--sweep", action="store_true", help="also time the job with 0, 1 and 2 workers")
    ap.add_argument("--weights", default="random", help="backbone weights (speed does not depend on them)")
    ap.add_argument("--backbone", default="efficientnet-lite0", choices=list(BACKBONES))
    ap.add_argument("--manifest", type=Path, default=None, help="an existing catalogue (else data/sample or generated)")
    ap.add_argument("--bare-images", type=int, default=1024, help="at most this many decoded images for the bare rate")
    ap.add_argument("--batch-sweep", default=None,
                    help="comma-separated batch sizes: time the bare forward and the job at each (then stop)")
    ap.add_argument("--graph-compare", action="store_true",
                    help="time the bare forward and the job eager and traced, interleaved (then stop)")
    args = ap.parse_args()
    device = torch.device(args.device)
    batch = args.batch_size or (defaults.BATCH_SIZE_GPU if device.type == "cuda" else defaults.BATCH_SIZE_CPU)
    workers = default_workers(device.type) if args.workers is None else args.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()} {cores} cores (load avg {load:.1f}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.manifest is not None:
            manifest, source = args.manifest, f"{args.manifest}"
        elif SAMPLE_CATALOG.exists() and len(pq.read_table(SAMPLE_CATALOG)) >= args.n:
            sample = read_catalog(SAMPLE_CATALOG).slice(0, args.n)
            pq.write_table(sample.select(["product_id", "image_path", "category"]), tmp / "catalog.parquet")
            manifest, source = tmp / "catalog.parquet", f"first {args.n} of {SAMPLE_CATALOG}"
        else:
            manifest, source = make_jpegs(tmp / "cat", args.n), f"{args.n} generated 256 px JPEGs"
        torch.manual_seed(0)
        ckpt = tmp / "checkpoint.pt"
        save_checkpoint(ckpt, build_embedder(categories=["shoes"], backbone=args.backbone,
                                             backbone_weights=args.weights), config={})
        model = load_checkpoint(ckpt, device=device).embedder.eval().to(memory_format=torch.channels_last)
        catalog = read_catalog(manifest)
        n = len(catalog) if args.manifest is not None else args.n
        paths = catalog.column("image_path").to_pylist()[:min(n, args.bare_images)]
        t = time.perf_counter()
        tensors = torch.stack([image_to_tensor(load_image(p), model.backbone.input_size) for p in paths])
        decode = len(paths) / (time.perf_counter() - t)
        print(f"images: {source} ({n}); backbone {args.backbone}; decode+resize in one process: {decode:.0f} img/s")
        tensors = tensors.to(device)
        if len(tensors) < n:
            print(f"  (bare rate over the first {len(tensors)} decoded images; it does not depend on the content)")

        if args.batch_sweep:
            batch_sweep(model.backbone, tensors, manifest, ckpt, tmp, n, batch, workers, args)
            return
        if args.graph_compare:
            graph_compare(model.backbone, tensors, manifest, ckpt, tmp, n, batch, workers, args)
            return
        configs = [workers] + ([w for w in (0, 1, 2) if w != workers] if args.sweep else [])
        bare, bare_cpu = [], []
        e2e, steady, cpu = ({w: [] for w in configs} for _ in range(3))
        for r in range(args.repeats):
            rate, ms = bare_rate(model.backbone, tensors, batch, device, total=n)
            bare.append(rate)
            bare_cpu.append(ms)
            for w in configs:
                a, b, c = job_rate(manifest, ckpt, tmp / "out", batch_size=batch, workers=w, device=args.device)
                e2e[w].append(a)
                steady[w].append(b)
                cpu[w].append(c)
            print(f"  repeat {r + 1}: bare {bare[-1]:.1f} img/s ({bare_cpu[-1]:.0f} CPU ms/img); "
                  + "; ".join(f"job(workers={w}) {e2e[w][-1]:.1f} end-to-end, {steady[w][-1]:.1f} steady "
                              f"({cpu[w][-1]:.0f} CPU ms/img)" for w in configs), flush=True)
        best, best_cpu = max(bare), min(bare_cpu)
        amp = ", bf16 autocast" if device.type == "cuda" else ""
        print(f"bare backbone forward (batch {batch}, channels_last, inference_mode{amp}): {best:.1f} img/s, "
              f"{best_cpu:.1f} CPU ms/img")
        for w in configs:
            print(f"embed_catalog job (batch {batch}, workers {w}{', default' if w == workers else ''}): "
                  f"{max(e2e[w]):.1f} img/s end to end (ratio {max(e2e[w]) / best:.2f}), "
                  f"{max(steady[w]):.1f} img/s steady state (ratio {max(steady[w]) / best:.2f}); "
                  f"{min(cpu[w]):.1f} CPU ms/img (bare/job CPU ratio {best_cpu / min(cpu[w]):.2f})")
            paired = sorted(j / b for j, b in zip(e2e[w], bare, strict=True))
            print(f"  paired per-repeat ratios (job end to end / bare of the same repeat): "
                  f"{', '.join(f'{r:.2f}' for r in paired)}; median {paired[len(paired) // 2]:.2f}")

def batch_sweep(backbone, tensors, manifest, ckpt, tmp: Path, n: int, default: int, workers: int, args) -> None:
    """Bare forward and job, end to end, at each batch size, interleaved over the repeats; best of each, and
    the ratio of each rate to the default batch's."""
    sizes = [int(b) for b in args.batch_sweep.split(",")]
    sizes = sizes if default in sizes else [default, *sizes]
    device = torch.device(args.device)
    bare = {b: [] for b in sizes}
    job = {b: [] for b in sizes}
    for r in range(args.repeats):
        for b in sizes:
            bare[b].append(bare_rate(backbone, tensors, b, device, total=n)[0])
            job[b].append(job_rate(manifest, ckpt, tmp / "out", batch_size=b, workers=workers, device=args.device)[0])
        print(f"  repeat {r + 1}: " + "; ".join(f"batch {b} bare {bare[b][-1]:.1f}, job {job[b][-1]:.1f} img/s"
                                                for b in sizes), flush=True)
    for b in sizes:
        print(f"batch {b}{' (default)' if b == default else ''}: bare {max(bare[b]):.1f} img/s "
              f"(x{max(bare[b]) / max(bare[default]):.2f} the default's), job end to end {max(job[b]):.1f} img/s "
              f"(x{max(job[b]) / max(job[default]):.2f})")


def graph_compare(backbone, tensors, manifest, ckpt, tmp: Path, n: int, batch: int, workers: int, args) -> None:
    """Bare forward and job (end to end, steady state), eager and traced, interleaved over the repeats; best of
    each, the traced/eager ratios, and how far the traced job's embeddings are from the eager job's."""
    device = torch.device(args.device)
    t = time.perf_counter()
    graphs = {"eager": backbone, "traced": traced_backbone(backbone, size=backbone.input_size, device=device)}
    print(f"  traced and frozen in {time.perf_counter() - t:.1f} s")
    rates = {(kind, g): [] for kind in ("bare", "end to end", "steady", "CPU ms/img") for g in graphs}
    embeddings = {}
    for r in range(args.repeats):
        for g in graphs:
            rates["bare", g].append(bare_rate(graphs[g], tensors, batch, device, total=n)[0])
            out = tmp / f"out-{g}"
            e2e, steady, cpu = job_rate(manifest, ckpt, out, batch_size=batch, workers=workers, device=args.device,
                                        trace=g == "traced")
            rates["end to end", g].append(e2e)
            rates["steady", g].append(steady)
            rates["CPU ms/img", g].append(cpu)
            table = pq.read_table(out / "part-00000.parquet")
            embeddings[g] = np.asarray(table.column("embedding").combine_chunks().flatten(),
                                       dtype=np.float32).reshape(len(table), -1)
        print(f"  repeat {r + 1}: " + "; ".join(
            f"{g}: bare {rates['bare', g][-1]:.1f}, job {rates['end to end', g][-1]:.1f} end to end "
            f"({rates['CPU ms/img', g][-1]:.0f} CPU ms/img)" for g in graphs), flush=True)
    for kind in ("bare", "end to end", "steady"):
        e, tr = max(rates[kind, "eager"]), max(rates[kind, "traced"])
        print(f"{kind:>10}: eager {e:.1f} img/s, traced {tr:.1f} img/s (x{tr / e:.2f})")
    e, tr = min(rates["CPU ms/img", "eager"]), min(rates["CPU ms/img", "traced"])
    print(f"CPU per image end to end: eager {e:.1f} ms, traced {tr:.1f} ms (x{e / tr:.2f} less)")
    a, b = embeddings["eager"], embeddings["traced"]
    print(f"embeddings traced vs eager: max |difference| {np.abs(a - b).max():.2e}, "
          f"min cosine {float(np.min(np.sum(a * b, axis=1))):.7f}")


if __name__ == "__main__":
    main()
