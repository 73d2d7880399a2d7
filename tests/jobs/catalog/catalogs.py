"""The embed-catalog tests' catalogues, checkpoint, runner and checks, shared by every test of jobs/catalog."""
from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from index.embedding_shards import MANIFEST
from jobs.catalog.embed_catalog import EmbedCatalogConfig, embed_catalog
from pipeline.checkpoint import save_checkpoint
from pipeline.images import image_to_tensor, load_image
from tests.helpers import png_header, random_embedder

ROOT = Path(__file__).resolve().parents[3]
SIZE = 32          # network input size in these tests (the job's hidden --image-size), for speed
DIM = 16
CATEGORIES = ["shoes", "bags"]


def new_checkpoint(path: Path, seed: int) -> Path:
    save_checkpoint(path, random_embedder(CATEGORIES, dim=DIM, seed=seed), config={"seed": seed})
    return path


def write_jpeg(path: Path, rng, size=(40, 48)) -> None:
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def write_manifest(root: Path, rows: list[tuple[str, str, str]], **extra) -> Path:
    columns = {"product_id": [r[0] for r in rows], "image_path": [r[1] for r in rows],
               "category": [r[2] for r in rows], **extra}
    pq.write_table(pa.table(columns), root / "catalog.parquet")
    return root / "catalog.parquet"


def make_catalog(root: Path, n: int, seed: int = 0) -> Path:
    """n random JPEGs (relative paths) and a manifest with an extra integer column."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        write_jpeg(root / "img" / f"{i}.jpg", rng)
        rows.append((f"p{i:04d}", f"img/{i}.jpg", CATEGORIES[i % 2]))
    return write_manifest(root, rows, price=list(range(n)))


def oracle(model, paths) -> np.ndarray:
    x = torch.stack([image_to_tensor(load_image(p), SIZE) for p in paths])
    with torch.inference_mode():
        return model.encode_products(x).numpy()


def read_shards(out: Path) -> pa.Table:
    names = sorted(p.name for p in out.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(out / n) for n in names])


def embeddings_of(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(len(table), -1)


def run(manifest, ckpt, out, *, overwrite=False, base=None, **kw):
    opts = {"shard_size": 10, "batch_size": 4, "workers": 0, "device": "cpu", "image_size": SIZE}
    return embed_catalog(manifest, ckpt, out, config=EmbedCatalogConfig(**{**opts, **kw}), overwrite=overwrite,
                         progress=False, base=base)


def kill_after_first_shard(proc, out: Path, kill, *, within: float) -> None:
    """Call kill() once the job's manifest lists a finished shard; assert the job died of it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            finished = json.loads((out / MANIFEST).read_text())["shards"]
        except (FileNotFoundError, ValueError):
            finished = []
        if finished:
            kill()
            break
        time.sleep(0.005)
    rc = proc.wait(timeout=60)
    assert rc == -signal.SIGKILL, f"the job ended before it could be killed (rc {rc}): {proc.stderr.read()[-2000:]!r}"


def make_bad_catalog(root: Path) -> tuple[Path, dict[str, str]]:
    """One product per bad-image kind; returns the manifest and {product_id: expected reject reason}."""
    rng = np.random.default_rng(2)
    img = root / "img"
    img.mkdir(parents=True)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    write_jpeg(img / "good.jpg", rng)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    (img / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (img / "text.jpg").write_text("this is not a picture\n")
    (img / "bomb.png").write_bytes(png_header(100_000, 100_000))
    (img / "huge.png").write_bytes(png_header(9_000, 9_000))
    Image.fromarray(rgb[:1, :1]).save(img / "tiny.png")            # one pixel: a valid image, embedded
    Image.fromarray(rgb).convert("CMYK").save(img / "cmyk.jpg", quality=95)
    Image.fromarray(np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (40, 1))).save(img / "grey16.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(img / "palette.png")
    rgba = np.dstack([rgb, np.full((40, 48), 255, np.uint8)])
    rgba[:, :20, 3] = 0
    Image.fromarray(rgba, "RGBA").save(img / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6                                   # display rotated 90 degrees clockwise
    Image.fromarray(rgb).save(img / "exif.jpg", quality=95, exif=exif.tobytes())
    (img / "folder.jpg").mkdir()
    kinds = {"good": "good.jpg", "missing": "missing.jpg", "truncated": "truncated.jpg", "text": "text.jpg",
             "bomb": "bomb.png", "huge": "huge.png", "tiny": "tiny.png", "cmyk": "cmyk.jpg",
             "grey16": "grey16.png", "palette": "palette.png", "rgba": "rgba.png", "exif": "exif.jpg",
             "folder": "folder.jpg"}
    manifest = write_manifest(root, [(k, f"img/{f}", "shoes") for k, f in kinds.items()])
    reasons = {"missing": "no such file", "truncated": "truncated image", "text": "not an image",
               "bomb": "decompression bomb", "huge": "pixel limit", "folder": "is a folder"}
    return manifest, reasons


def cli_args(manifest, ckpt, out, *more):
    return ["--manifest", str(manifest), "--checkpoint", str(ckpt), "--out", str(out), "--shard-size", "10",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--image-size", str(SIZE), "--quiet", *more]


def assert_one_line_error(result, *words, prefix="embed-catalog"):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception   # a ClickException, not a crash
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prefix}: error: "), result.output
    assert result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]
