"""JPEG draft mode (DCT scaling while decoding) against the exact decode: time per image and per-product cosine.

    python -m bench.bench_jpeg_draft [--images DIR] [--n 96] [--sizes 448,600,800,1000,1200]
                                     [--weights imagenet|random]

Photos are cut from the images in DIR (any format; random crops resized to each size and saved as JPEG
at quality 80-95) or, without DIR, generated (bench/make_catalogue.py). Every photo is decoded three
ways and resized to 224 px: exact (the default path), `--jpeg-draft` (DCT-scaled while both sides stay
at least 448 px, pipeline.images.draft_floor) and draft down to 224 itself (the most DCT scaling
Pillow allows, for the record). Per short side it prints the decode + resize time of each and the
minimum and mean cosine, per product, between the exact path's embeddings and each draft's, with
EfficientNet-Lite0 (ImageNet weights by default: a random network is not a fair judge of what an image
shows) and seeded random heads. Target: every product at cosine >= 0.999.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.make_catalogue import make_catalogue
from pipeline.embedder import build_embedder
from pipeline.images import draft_floor, image_to_tensor, load_image

SIZE = 224


def photos_from(folder: Path, n: int, sizes: list[int], seed: int = 0) -> list[bytes]:
    """n JPEGs cut from the images in `folder`: random crops, resized to one of `sizes` (short side)."""
    sources = []
    for path in sorted(folder.iterdir()):
        try:
            with Image.open(path) as img:
                if min(img.size) >= 256:
                    sources.append(np.asarray(img.convert("RGB")))
        except OSError:
            continue
    if not sources:
        raise SystemExit(f"no images of 256 px or more in {folder}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        short = sizes[i % len(sizes)]
        aspect = rng.uniform(0.8, 1.25)
        crop = Image.fromarray(src[y:y + ch, x:x + cw]).resize((short, int(short * aspect)) if aspect >= 1
                                                                else (int(short / aspect), short), Image.LANCZOS)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
        out.append(buf.getvalue())
    return out


def generated(n: int, sizes: list[int]) -> list[bytes]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for px in sizes:
            manifest = make_catalogue(Path(tmp) / str(px), max(1, n // len(sizes)), px, seed=px)
            out += [p.read_bytes() for p in sorted((manifest.parent / "img").iterdir())]
    return out


def decode(data: bytes, draft_size: int | None) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    pixels = image_to_tensor(load_image(data, draft_size=draft_size), SIZE)
    return pixels, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=None, help="a folder of photos to cut test JPEGs from")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--sizes", default="448,600,800,1000,1200", help="short sides of the test JPEGs")
    ap.add_argument("--weights", default="imagenet", choices=["imagenet", "random"])
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    model = build_embedder(categories=["shoes"], backbone_weights=args.weights).eval()
    datas = photos_from(args.images, args.n, sizes) if args.images else generated(args.n, sizes)
    source = f"cut from {args.images}" if args.images else "generated"
    print(f"{len(datas)} JPEGs ({source}), EfficientNet-Lite0 ({args.weights} weights), load avg "
          f"{os.getloadavg()[0]:.1f}")
    ways = {"exact": None, "--jpeg-draft": draft_floor(SIZE), f"draft to {SIZE}": SIZE}
    pixels = {w: [] for w in ways}
    seconds = {w: [] for w in ways}
    for data in datas:
        for way, draft_size in ways.items():
            px, s = decode(data, draft_size)
            pixels[way].append(px)
            seconds[way].append(s)
    with torch.inference_mode():
        emb = {w: torch.cat([model.encode_products(torch.stack(p[i:i + 32])) for i in range(0, len(p), 32)])
               for w, p in pixels.items()}
    short = np.array([min(Image.open(io.BytesIO(d)).size) for d in datas])
    print(f"{'short side':>10} {'n':>4} | {'exact ms':>8} | " + " | ".join(
        f"{w:>14}: ms, speed-up, min cos, mean cos" for w in list(ways)[1:]))
    for px in sorted(set(short)):
        sel = np.flatnonzero(short == px)
        exact_ms = 1e3 * np.mean([seconds["exact"][i] for i in sel])
        cells = []
        for way in list(ways)[1:]:
            ms = 1e3 * np.mean([seconds[way][i] for i in sel])
            cos = (emb["exact"][sel] * emb[way][sel]).sum(1)
            cells.append(f"{ms:14.2f}, {exact_ms / ms:5.2f}x, {float(cos.min()):.5f}, {float(cos.mean()):.5f}")
        print(f"{px:>10} {len(sel):>4} | {exact_ms:8.2f} | " + " | ".join(cells))
    for way in list(ways)[1:]:
        cos = (emb["exact"] * emb[way]).sum(1)
        met = "met" if float(cos.min()) >= 0.999 else "not met"
        print(f"{way}: min cosine over all {len(datas)} products {float(cos.min()):.5f} (target >= 0.999: {met}); "
              f"decode + resize {np.sum(seconds['exact']) / np.sum(seconds[way]):.2f}x faster than exact overall")


if __name__ == "__main__":
    main()
