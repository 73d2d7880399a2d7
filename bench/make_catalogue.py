"""Generated catalogues for the embed-catalog benchmarks: n photo-like JPEGs of one size, made in parallel.

    python -m bench.make_catalogue OUT --n 20000 --px 800 [--workers N]

Each image is a crop of a smooth colour field plus film grain (the grain gives JPEGs of a realistic
size: about 18 KB at 256 px and 100 KB at 800 px, quality 85-92), no two alike. Made by every core at
once from a few large fields per process, so 20,000 800-px images take seconds, not minutes. Writes
OUT/img/<i>.jpg and OUT/catalog.parquet (product_id, image_path, category).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageChops

GRAIN = 10               # grey levels either side
_planes: dict = {}


def _init(px: int, seed: int) -> None:
    """Per process: two fields and a grain plane twice the image size, to crop every image from."""
    rng = np.random.default_rng([seed, os.getpid()])
    big = 2 * px
    _planes["fields"] = [Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
                         .resize((64, 64), Image.BICUBIC).resize((big, big), Image.BILINEAR) for _ in range(2)]
    _planes["grain"] = Image.fromarray(rng.integers(0, 2 * GRAIN + 1, (big, big, 3), dtype=np.uint8))
    _planes["px"] = px


def _make(job: tuple[int, str]) -> int:
    i, path = job
    px = _planes["px"]
    rng = np.random.default_rng(i)
    x, y, gx, gy = (int(v) for v in rng.integers(0, px, 4))
    field = _planes["fields"][i % 2].crop((x, y, x + px, y + px))
    if i % 3 == 0:
        field = field.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageChops.add(field, _planes["grain"].crop((gx, gy, gx + px, gy + px)), scale=1.0, offset=-GRAIN)
    image.save(path, quality=int(rng.integers(85, 93)))
    return os.path.getsize(path)


def make_catalogue(root: Path, n: int, px: int, *, workers: int | None = None, seed: int = 0) -> Path:
    """n JPEGs of px x px under root/img and root/catalog.parquet; returns the manifest's path."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(root / "img" / f"{i}.jpg")) for i in range(n)]
    with ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(px, seed)) as pool:
        sizes = list(pool.map(_make, jobs, chunksize=max(1, min(256, n // (4 * (workers or os.cpu_count() or 1))))))
    table = pa.table({"product_id": [f"p{i}" for i in range(n)], "image_path": [f"img/{i}.jpg" for i in range(n)],
                      "category": ["shoes"] * n})
    pq.write_table(table, root / "catalog.parquet")
    (root / "bytes.txt").write_text(str(sum(sizes)))
    return root / "catalog.parquet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    started = time.perf_counter()
    make_catalogue(args.out, args.n, args.px, workers=args.workers)
    mean_kb = int((args.out / "bytes.txt").read_text()) / args.n / 1024
    print(f"made {args.n} {args.px}-px JPEGs (mean {mean_kb:.0f} KB) in {time.perf_counter() - started:.1f} s "
          f"in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
