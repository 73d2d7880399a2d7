"""embed-catalog: oracle embeddings, shard layout, resume after SIGKILL, bad images, CLI refusals."""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from common.errors import NothingProducedError
from index.embedding_shards import MANIFEST
from jobs.catalog.embed_catalog import EmbedCatalogConfig, EmbedCatalogError, embed_catalog, embed_catalog_command
from jobs.cli import main as ctl
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.images import image_to_tensor, load_image
from tests.helpers import random_embedder

ROOT = Path(__file__).resolve().parents[3]
SIZE = 32          # network input size in these tests (the job's hidden --image-size), for speed
DIM = 16
CATEGORIES = ["shoes", "bags"]


# -- fixtures and helpers -----------------------------------------------------------------------

def _new_checkpoint(path: Path, seed: int) -> Path:
    save_checkpoint(path, random_embedder(CATEGORIES, dim=DIM, seed=seed), config={"seed": seed})
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads stall each other at every barrier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _new_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", seed=0)


@pytest.fixture(scope="module")
def model(ckpt):
    return load_checkpoint(ckpt).embedder.eval()


def _jpeg(path: Path, rng, size=(40, 48)) -> None:
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def _write_manifest(root: Path, rows: list[tuple[str, str, str]], **extra) -> Path:
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
        _jpeg(root / "img" / f"{i}.jpg", rng)
        rows.append((f"p{i:04d}", f"img/{i}.jpg", CATEGORIES[i % 2]))
    return _write_manifest(root, rows, price=list(range(n)))


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
    opts = dict(shard_size=10, batch_size=4, workers=0, device="cpu", image_size=SIZE)
    return embed_catalog(manifest, ckpt, out, config=EmbedCatalogConfig(**{**opts, **kw}), overwrite=overwrite,
                         progress=False, base=base)


# -- the job -------------------------------------------------------------------------------------

def test_embeddings_equal_the_model_in_manifest_order_and_shards(tmp_path, ckpt, model):
    manifest = make_catalog(tmp_path / "cat", 23)
    out = tmp_path / "emb"
    summary = run(manifest, ckpt, out, workers=1)
    assert (summary["embedded"], summary["rejected"], summary["shards"]) == (23, 0, 3)

    shards = [pq.read_table(out / f"part-{k:05d}.parquet") for k in range(3)]
    assert [len(s) for s in shards] == [10, 10, 3]
    table = pa.concat_tables(shards)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert table.column_names == ["product_id", "category", "image_path", "price", "image_sha256", "embedding"]
    assert table.column("product_id").to_pylist() == [f"p{i:04d}" for i in range(23)]
    assert table.column("price").to_pylist() == [str(i) for i in range(23)]
    paths = table.column("image_path").to_pylist()
    assert paths == [str((tmp_path / "cat" / "img" / f"{i}.jpg").resolve()) for i in range(23)]
    xb = embeddings_of(table)
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(xb, oracle(model, paths), atol=1e-5)
    assert np.abs(xb[0] - xb[1:]).max() > 1e-2  # distinct images give distinct embeddings: order is tested

    info = json.loads((out / MANIFEST).read_text())
    assert info["complete"] and info["n_input"] == 23 and info["shard_size"] == 10 and info["dim"] == DIM
    assert info["backbone"] == "efficientnet-lite0"
    assert [(s["name"], s["rows"], s["rejected"]) for s in info["shards"]] == [
        ("part-00000.parquet", 10, 0), ("part-00001.parquet", 10, 0), ("part-00002.parquet", 3, 0)]
    assert (out / "rejects.jsonl").read_text() == ""

    # A rerun over a complete output is a no-op: nothing is rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(manifest, ckpt, out)
    assert again["noop"] and again["embedded"] == 23
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_the_manifest_records_the_draft_setting_and_a_run_with_the_other_one_is_refused(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 6)
    out = tmp_path / "emb"
    assert run(manifest, ckpt, out, jpeg_draft=True)["jpeg_draft"]
    assert json.loads((out / MANIFEST).read_text())["jpeg_draft"] is True
    with pytest.raises(EmbedCatalogError, match="written with --jpeg-draft .* use another --out or --overwrite"):
        run(manifest, ckpt, out)
    assert run(manifest, ckpt, out, jpeg_draft=True)["noop"]


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


def test_killed_run_resumes_to_the_same_shards(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 200, seed=1)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    run(manifest, ckpt, clean, shard_size=20)

    cmd = [sys.executable, "-m", "jobs.catalog.embed_catalog", "--manifest", str(manifest), "--checkpoint", str(ckpt),
           "--out", str(resumed), "--shard-size", "20", "--batch-size", "4", "--workers", "0",
           "--device", "cpu", "--image-size", str(SIZE), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_after_first_shard(proc, resumed, lambda: proc.send_signal(signal.SIGKILL), within=120)
    proc.stderr.close()
    before = json.loads((resumed / MANIFEST).read_text())
    assert not before["complete"] and 1 <= len(before["shards"]) < 10
    kept = {s["name"]: (resumed / s["name"]).stat().st_mtime_ns for s in before["shards"]}

    summary = run(manifest, ckpt, resumed, shard_size=20)
    assert summary["resumed_shards"] == len(kept) and summary["processed"] == 200 - 20 * len(kept)
    assert {n: (resumed / n).stat().st_mtime_ns for n in kept} == kept      # finished shards not redone
    assert sorted(p.name for p in resumed.glob("part-*")) == sorted(p.name for p in clean.glob("part-*"))
    for k in range(10):
        a, b = (pq.read_table(d / f"part-{k:05d}.parquet") for d in (clean, resumed))
        assert a.column("product_id").to_pylist() == b.column("product_id").to_pylist()
        np.testing.assert_allclose(embeddings_of(a), embeddings_of(b), atol=1e-5)
    ids = read_shards(resumed).column("product_id").to_pylist()
    assert ids == [f"p{i:04d}" for i in range(200)]                       # no duplicates, no gaps
    assert not [p for p in resumed.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((resumed / MANIFEST).read_text())["complete"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the pixel data is a stub)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_bad_catalog(root: Path) -> tuple[Path, dict[str, str]]:
    """One product per bad-image kind; returns the manifest and {product_id: expected reject reason}."""
    rng = np.random.default_rng(2)
    img = root / "img"
    img.mkdir(parents=True)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    _jpeg(img / "good.jpg", rng)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    (img / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (img / "text.jpg").write_text("this is not a picture\n")
    (img / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    (img / "huge.png").write_bytes(_png_header(9_000, 9_000))
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
    manifest = _write_manifest(root, [(k, f"img/{f}", "shoes") for k, f in kinds.items()])
    reasons = {"missing": "no such file", "truncated": "truncated image", "text": "not an image",
               "bomb": "decompression bomb", "huge": "pixel limit", "folder": "is a folder"}
    return manifest, reasons


def test_bad_images_are_embedded_or_rejected_with_their_reason(tmp_path, ckpt, model):
    manifest, reasons = make_bad_catalog(tmp_path / "cat")
    out = tmp_path / "emb"
    summary = run(manifest, ckpt, out, shard_size=5, workers=1)
    assert (summary["embedded"], summary["rejected"], summary["complete"]) == (7, 6, True)

    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["product_id"] for r in rejects] == list(reasons)            # manifest order
    for r in rejects:
        assert reasons[r["product_id"]] in r["reason"], r
        assert r["image_path"].endswith(("jpg", "png")) and not r["reason"].startswith(r["image_path"])
    info = json.loads((out / MANIFEST).read_text())
    assert [(s["rows"], s["rejected"]) for s in info["shards"]] == [(1, 4), (4, 1), (2, 1)]

    table = read_shards(out)
    ids = table.column("product_id").to_pylist()
    assert ids == ["good", "tiny", "cmyk", "grey16", "palette", "rgba", "exif"]
    xb = embeddings_of(table)
    np.testing.assert_allclose(xb, oracle(model, table.column("image_path").to_pylist()), atol=1e-5)
    # EXIF: the job's embedding is that of the decoded pixels turned upright by hand.
    with Image.open(tmp_path / "cat" / "img" / "exif.jpg") as raw:
        upright = raw.convert("RGB").rotate(-90, expand=True)
    with torch.inference_mode():
        expected = model.encode_products(image_to_tensor(upright, SIZE)[None]).numpy()[0]
    np.testing.assert_allclose(xb[ids.index("exif")], expected, atol=1e-5)
    # Rerunning does not duplicate rejects.
    run(manifest, ckpt, out, shard_size=5)
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 6


def test_a_run_that_embeds_nothing_fails_after_writing_its_rejects(tmp_path, ckpt):
    root = tmp_path / "cat"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_text("not a picture")
    manifest = _write_manifest(root, [("a", "img/a.jpg", "shoes"), ("b", "img/missing.jpg", "bags")])
    out = tmp_path / "emb"
    with pytest.raises(NothingProducedError, match="all 2 images were rejected"):
        run(manifest, ckpt, out)
    rejects = [json.loads(line)["product_id"] for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects == ["a", "b"]
    result = CliRunner().invoke(ctl, ["embed-catalog", *_cli_args(manifest, ckpt, tmp_path / "emb2")])
    _assert_one_line_error(result, "nothing embedded", "rejects.jsonl", prefix="ctl embed-catalog")
    assert result.exit_code == 1


def test_limit_and_overwrite(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 12)
    out = tmp_path / "emb"
    assert run(manifest, ckpt, out, limit=7)["embedded"] == 7
    result = CliRunner().invoke(embed_catalog_command, _cli_args(manifest, ckpt, out))
    _assert_one_line_error(result, "--limit")
    summary = run(manifest, ckpt, out, overwrite=True)
    assert (summary["embedded"], summary["shards"]) == (12, 2)
    assert read_shards(out).column("product_id").to_pylist() == [f"p{i:04d}" for i in range(12)]


# -- the CLI -------------------------------------------------------------------------------------

def _cli_args(manifest, ckpt, out, *more):
    return ["--manifest", str(manifest), "--checkpoint", str(ckpt), "--out", str(out), "--shard-size", "10",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--image-size", str(SIZE), "--quiet", *more]


def _assert_one_line_error(result, *words, prefix="embed-catalog"):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception   # a ClickException, not a crash
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prefix}: error: "), result.output
    assert result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]


def test_cli_embeds_and_refuses_a_different_checkpoint(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 6)
    out = tmp_path / "emb"
    runner = CliRunner()
    result = runner.invoke(embed_catalog_command, _cli_args(manifest, ckpt, out))
    assert result.exit_code == 0, result.output
    assert "embedded 6, rejected 0 (see" in result.output and "rejects.jsonl" in result.output

    other = _new_checkpoint(tmp_path / "other.pt", seed=1)
    _assert_one_line_error(runner.invoke(embed_catalog_command, _cli_args(manifest, other, out)),
                           "different checkpoint", "--overwrite")
    assert json.loads((out / MANIFEST).read_text())["complete"]          # the refused run left it alone
    result = runner.invoke(embed_catalog_command, _cli_args(manifest, other, out, "--overwrite"))
    assert result.exit_code == 0, result.output

    other_catalog = make_catalog(tmp_path / "cat2", 6, seed=9)
    _assert_one_line_error(runner.invoke(embed_catalog_command, _cli_args(other_catalog, other, out)),
                           "different catalogue")


def test_cli_user_errors(tmp_path, ckpt):
    runner = CliRunner()
    manifest = make_catalog(tmp_path / "cat", 3)
    _assert_one_line_error(runner.invoke(embed_catalog_command, _cli_args(tmp_path / "nope.parquet", ckpt, tmp_path / "o1")),
                           "does not exist")
    _assert_one_line_error(runner.invoke(embed_catalog_command, _cli_args(manifest, tmp_path / "none.pt", tmp_path / "o2")),
                           "no checkpoint", "make train")
    (tmp_path / "dup").mkdir()
    dup = _write_manifest(tmp_path / "dup", [("a", "img/0.jpg", "shoes"), ("b", "img/1.jpg", "bags"),
                                             ("a", "img/2.jpg", "shoes")])
    _assert_one_line_error(runner.invoke(embed_catalog_command, _cli_args(dup, ckpt, tmp_path / "o3")),
                           "duplicate product_id", "'a'")
    stray = tmp_path / "o4"
    stray.mkdir()
    (stray / "part-00000.parquet").write_bytes(b"")
    _assert_one_line_error(runner.invoke(embed_catalog_command, _cli_args(manifest, ckpt, stray)),
                           "without a _manifest.json", "--overwrite")
    if not torch.cuda.is_available():
        _assert_one_line_error(runner.invoke(embed_catalog_command, _cli_args(manifest, ckpt, tmp_path / "o5")
                                             + ["--device", "cuda"]), "no CUDA device")


def test_registered_in_ctl():
    import click

    from jobs.cli import main

    assert main.get_command(click.Context(main), "embed-catalog") is embed_catalog_command
