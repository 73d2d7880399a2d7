"""Phone-size scene photos: the exact decode against JPEG draft decoding, in time and in the answers a user gets.

    python -m bench.bench_scene_decode [--images DIR] [--n 48] [--sizes 768,1536,2268,3024]
                                       [--checkpoint C --index I] [--k 20] [--repeats 3]

A scene query is one upload, often a phone photo (4032 x 3024, 12 MP). Decoding it in full and resizing it
to the network's 224 px costs several forwards of CPU (docs/benchmarks-query.md). Pillow can decode a JPEG
DCT-scaled (1/2, 1/4 or 1/8); a query's decode (pipeline.images.load_scene) does so while both sides stay at
least 4x the input (query_draft_floor; --draft-floor to try another).
Photos are cut from the images in DIR (random crops resized to each short side, saved as JPEG at quality
80-95; see bench.bench_jpeg_draft) with mild sensor-like noise added before saving, so that an upscaled
crop is not smoother than a camera's picture; without DIR, skimage's sample photos. For each photo, in one
interleaved loop, decode + resize is timed `--repeats` times both ways (medians), and the retriever answers
three versions of it: decoded exactly, decoded with draft, and the photo re-saved as a JPEG of quality 90
and decoded exactly (what any upload path that re-encodes photos already does to the answer: the
yardstick). It prints per short side the times, the speed-up and the top-k overlap of each version's
answer with the exact one's. The retriever is the one given (--checkpoint and --index) or the embedded
sample's (data/runs/sample, data/index/sample), else a synthetic catalogue.

With --labelled RUN (and --data, the dataset RUN was trained on or a larger catalogue around the same looks), the
held-out test pairs of RUN's split answer whether the draft decode costs quality: each scene, its product masked
as evaluation masks it, upscaled to a phone photo of --phone px a side (LANCZOS, the same noise, JPEG quality
90), is decoded exactly and with draft and ranked against every product of its category (exhaustive, as
`ctl evaluate --through-index` ranks), beside the scene as it is; HR@10 / HR@50 each way, and draft minus exact
paired over the same queries with a 95 % bootstrap interval.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.bench_jpeg_draft import photos_from
from bench.bench_query import find_artifacts
from jobs.data.datasets import load_dataset
from jobs.training.run_layout import RunLayout
from pipeline.images import image_to_tensor, load_image, query_draft_floor
from pipeline.metrics import bootstrap_mean, paired_bootstrap
from pipeline.scene_crops import exclude_product
from retrieval.retriever import Retriever

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/skimage/data"


def noisy(jpeg: bytes, sigma: float, seed: int) -> bytes:
    """The photo with Gaussian noise of `sigma` grey levels, saved again at the quality-90 JPEG a camera writes."""
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)
    rgb += np.random.default_rng(seed).normal(0, sigma, rgb.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def reencoded(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decode_seconds(data: bytes, draft_size: int | None, size: int) -> float:
    started = time.perf_counter()
    image_to_tensor(load_image(data, draft_size=draft_size), size)
    return time.perf_counter() - started


def overlap(a, b, k: int) -> float:
    return len({h.product_id for h in a.hits[:k]} & {h.product_id for h in b.hits[:k]}) / k


def labelled(retriever: Retriever, run: Path, data_dir: Path, phone: int, noise: float, floor: int) -> None:
    """HR@10 / HR@50 of the run's held-out test pairs at phone size, decoded exactly and with draft (module doc)."""
    dataset = load_dataset(data_dir)
    test = set(RunLayout(run).read_split().test)
    exclusion = RunLayout(run).read_config().get("exclusion", "mask")
    known = set(retriever.categories)
    ways = ("as it is", "phone, exact", "phone, draft")
    ranks: dict[str, list[int]] = {w: [] for w in ways}
    for j, pair in enumerate(dataset.pairs):
        category = dataset.products[pair.product_id].category
        if pair.scene_id not in test or category not in known:
            continue
        scene = exclude_product(load_image(dataset.scenes[pair.scene_id]), pair.bbox, exclusion)
        buf = io.BytesIO()
        scene.resize((phone, phone), Image.LANCZOS).save(buf, "JPEG", quality=90)
        big = noisy(buf.getvalue(), noise, j) if noise > 0 else buf.getvalue()
        n_c = len(retriever.index.rows_for_category(category))
        for way, img in zip(ways, (scene, load_image(big), load_image(big, draft_size=floor)), strict=True):
            hits = retriever.retrieve(img, k=n_c, candidates=n_c, category=category).hits
            ranks[way].append(next((h.rank for h in hits if h.product_id == pair.product_id), n_c + 1))
    print(f"{len(ranks[ways[0]])} held-out test pairs of {run}, catalogue {data_dir} ({len(retriever):,} products), "
          f"phone photos {phone} px a side, draft floor {floor} px")
    for way in ways:
        r = np.asarray(ranks[way])
        cells = [bootstrap_mean(r <= k) for k in (10, 50)]
        print(f"  {way:>13}: " + "  ".join(f"HR@{k} {c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"
                                          for k, c in zip((10, 50), cells, strict=True)))
    exact, draft = np.asarray(ranks["phone, exact"]), np.asarray(ranks["phone, draft"])
    diffs = [paired_bootstrap(draft <= k, exact <= k) for k in (10, 50)]
    print("  draft minus exact: " + "  ".join(f"HR@{k} {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                                             for k, d in zip((10, 50), diffs, strict=True))
          + f"; same rank on {np.mean(exact == draft):.2f} of the queries")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="a folder of photos to cut test JPEGs from")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--sizes", default="768,1536,2268,3024", help="short sides of the test JPEGs")
    ap.add_argument("--noise", type=float, default=3.0, help="sensor-like noise, grey levels (0: none)")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--labelled", type=Path, default=None, metavar="RUN",
                    help="rank RUN's held-out test pairs at phone size instead (needs --data)")
    ap.add_argument("--data", type=Path, default=None, help="with --labelled: the dataset of the pairs")
    ap.add_argument("--phone", type=int, default=3024, help="with --labelled: the phone photo's side in px")
    ap.add_argument("--draft-floor", type=int, default=None,
                    help="the smallest side DCT scaling may reach [default: pipeline.images.query_draft_floor]")
    args = ap.parse_args()
    if (args.checkpoint is None) != (args.index is None):
        raise SystemExit("give --checkpoint and --index together, or neither")
    tmp = None
    if args.checkpoint is None:
        args.checkpoint, args.index, _, source, tmp = find_artifacts(0, 1, prefix="bench-scene-decode-")
    else:
        source = f"{args.checkpoint} with {args.index}"
    try:
        retriever = Retriever.load(checkpoint=args.checkpoint, index_dir=args.index)
        size = retriever.input_size
        floor = args.draft_floor or query_draft_floor(size)
        if args.labelled is not None:
            if args.data is None:
                raise SystemExit("--labelled needs --data")
            labelled(retriever, args.labelled, args.data, args.phone, args.noise, floor)
            return
        sizes = [int(s) for s in args.sizes.split(",")]
        photos = [noisy(p, args.noise, i) if args.noise > 0 else p
                  for i, p in enumerate(photos_from(args.images, args.n, sizes))]
        print(f"{len(photos)} JPEGs cut from {args.images} (noise {args.noise} grey levels); retriever: {source}; "
              f"k = {args.k}; draft floor {floor} px; load avg {os.getloadavg()[0]:.1f}", flush=True)
        rows = []
        for data in photos:
            exact_s, draft_s = [], []
            for _ in range(args.repeats):   # interleaved, so that a change in the machine's load hits both
                exact_s.append(decode_seconds(data, None, size))
                draft_s.append(decode_seconds(data, floor, size))
            exact = retriever.retrieve(load_image(data), k=args.k)
            draft = retriever.retrieve(load_image(data, draft_size=floor), k=args.k)
            again = retriever.retrieve(load_image(reencoded(data)), k=args.k)
            rows.append({"short": min(Image.open(io.BytesIO(data)).size), "kb": len(data) / 1024,
                         "exact_ms": 1e3 * statistics.median(exact_s), "draft_ms": 1e3 * statistics.median(draft_s),
                         "draft_overlap": overlap(exact, draft, args.k),
                         "reencoded_overlap": overlap(exact, again, args.k)})
        print(f"{'short side':>10} {'n':>3} {'kB':>6} | {'exact ms':>8} {'draft ms':>8} {'speed-up':>8} | "
              f"overlap@{args.k} with the exact answer: {'draft mean / min':>16} | {'re-encoded q90 mean / min':>25}")
        for short in sorted({r["short"] for r in rows}):
            sel = [r for r in rows if r["short"] == short]
            e, d = (statistics.mean(r[key] for r in sel) for key in ("exact_ms", "draft_ms"))
            do, ro = ([r[key] for r in sel] for key in ("draft_overlap", "reencoded_overlap"))
            print(f"{short:>10} {len(sel):>3} {statistics.mean(r['kb'] for r in sel):6.0f} | {e:8.1f} {d:8.1f} "
                  f"{e / d:7.2f}x | {statistics.mean(do):>10.3f} / {min(do):.2f} | {statistics.mean(ro):>19.3f} / "
                  f"{min(ro):.2f}")
        do, ro = ([r[key] for r in rows] for key in ("draft_overlap", "reencoded_overlap"))
        print(f"all: draft decode + resize {sum(r['exact_ms'] for r in rows) / sum(r['draft_ms'] for r in rows):.2f}x "
              f"faster; overlap@{args.k} with the exact answer {statistics.mean(do):.3f} (draft) against "
              f"{statistics.mean(ro):.3f} (the photo re-encoded at quality 90)")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
