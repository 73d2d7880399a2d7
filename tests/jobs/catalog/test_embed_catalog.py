"""embed-catalog: oracle embeddings, shard layout, resume after SIGKILL, bad images, CLI refusals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from common.errors import NothingProducedError
from index.embedding_shards import MANIFEST
from jobs.catalog.embed_catalog import EmbedCatalogError, embed_catalog_command
from jobs.cli import main as ctl
from pipeline.images import image_to_tensor
from tests.jobs.catalog.catalogs import (
    DIM,
    ROOT,
    SIZE,
    assert_one_line_error,
    cli_args,
    embeddings_of,
    kill_after_first_shard,
    make_bad_catalog,
    make_catalog,
    new_checkpoint,
    oracle,
    read_shards,
    run,
    write_manifest,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# -- fixtures and helpers -----------------------------------------------------------------------


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


def test_the_traced_backbone_embeds_as_the_model_does_and_is_chosen_by_size(tmp_path, ckpt, model):
    manifest = make_catalog(tmp_path / "cat", 9)
    traced = run(manifest, ckpt, tmp_path / "traced", trace=True)
    eager = run(manifest, ckpt, tmp_path / "eager", trace=False)
    chosen = run(manifest, ckpt, tmp_path / "chosen")
    assert (traced["graph"], eager["graph"], chosen["graph"]) == ("traced", "eager", "eager")
    assert traced["trace_seconds"] > 0 and eager["trace_seconds"] is None
    assert "asked for" in traced["graph_reason"] and "9 images" in chosen["graph_reason"]
    table = read_shards(tmp_path / "traced")
    expected = oracle(model, table.column("image_path").to_pylist())
    np.testing.assert_allclose(embeddings_of(table), expected, atol=1e-4)
    np.testing.assert_allclose(embeddings_of(read_shards(tmp_path / "eager")), expected, atol=1e-5)


def test_the_cli_says_it_traced_and_refuses_trace_with_compile(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 2)
    result = CliRunner().invoke(embed_catalog_command, cli_args(manifest, ckpt, tmp_path / "t", "--trace"))
    assert result.exit_code == 0 and "; traced backbone (trace and warm-up " in result.output, result.output
    assert_one_line_error(CliRunner().invoke(embed_catalog_command,
                                             cli_args(manifest, ckpt, tmp_path / "o", "--trace", "--compile")),
                          "--trace and --compile", "choose one")
    assert not (tmp_path / "o").exists()


def test_the_manifest_records_the_draft_setting_and_a_run_with_the_other_one_is_refused(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 6)
    out = tmp_path / "emb"
    assert run(manifest, ckpt, out, jpeg_draft=True)["jpeg_draft"]
    assert json.loads((out / MANIFEST).read_text())["jpeg_draft"] is True
    with pytest.raises(EmbedCatalogError, match="written with --jpeg-draft .* use another --out or --overwrite"):
        run(manifest, ckpt, out)
    assert run(manifest, ckpt, out, jpeg_draft=True)["noop"]


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
    manifest = write_manifest(root, [("a", "img/a.jpg", "shoes"), ("b", "img/missing.jpg", "bags")])
    out = tmp_path / "emb"
    with pytest.raises(NothingProducedError, match="all 2 images were rejected"):
        run(manifest, ckpt, out)
    rejects = [json.loads(line)["product_id"] for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects == ["a", "b"]
    result = CliRunner().invoke(ctl, ["embed-catalog", *cli_args(manifest, ckpt, tmp_path / "emb2")])
    assert_one_line_error(result, "nothing embedded", "rejects.jsonl", prefix="ctl embed-catalog")
    assert result.exit_code == 1


def test_limit_and_overwrite(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 12)
    out = tmp_path / "emb"
    assert run(manifest, ckpt, out, limit=7)["embedded"] == 7
    result = CliRunner().invoke(embed_catalog_command, cli_args(manifest, ckpt, out))
    assert_one_line_error(result, "--limit")
    summary = run(manifest, ckpt, out, overwrite=True)
    assert (summary["embedded"], summary["shards"]) == (12, 2)
    assert read_shards(out).column("product_id").to_pylist() == [f"p{i:04d}" for i in range(12)]


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_embeds_and_refuses_a_different_checkpoint(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 6)
    out = tmp_path / "emb"
    runner = CliRunner()
    result = runner.invoke(embed_catalog_command, cli_args(manifest, ckpt, out))
    assert result.exit_code == 0, result.output
    assert "embedded 6, rejected 0 (see" in result.output and "rejects.jsonl" in result.output

    other = new_checkpoint(tmp_path / "other.pt", seed=1)
    assert_one_line_error(runner.invoke(embed_catalog_command, cli_args(manifest, other, out)),
                          "different checkpoint", "--overwrite")
    assert json.loads((out / MANIFEST).read_text())["complete"]          # the refused run left it alone
    result = runner.invoke(embed_catalog_command, cli_args(manifest, other, out, "--overwrite"))
    assert result.exit_code == 0, result.output

    other_catalog = make_catalog(tmp_path / "cat2", 6, seed=9)
    assert_one_line_error(runner.invoke(embed_catalog_command, cli_args(other_catalog, other, out)),
                          "different catalogue")


def test_cli_user_errors(tmp_path, ckpt):
    runner = CliRunner()
    manifest = make_catalog(tmp_path / "cat", 3)
    missing_manifest = cli_args(tmp_path / "nope.parquet", ckpt, tmp_path / "o1")
    assert_one_line_error(runner.invoke(embed_catalog_command, missing_manifest),
                          "does not exist")
    missing_checkpoint = cli_args(manifest, tmp_path / "none.pt", tmp_path / "o2")
    assert_one_line_error(runner.invoke(embed_catalog_command, missing_checkpoint),
                          "no checkpoint", "make train")
    (tmp_path / "dup").mkdir()
    dup = write_manifest(tmp_path / "dup", [("a", "img/0.jpg", "shoes"), ("b", "img/1.jpg", "bags"),
                                             ("a", "img/2.jpg", "shoes")])
    assert_one_line_error(runner.invoke(embed_catalog_command, cli_args(dup, ckpt, tmp_path / "o3")),
                          "duplicate product_id", "'a'")
    stray = tmp_path / "o4"
    stray.mkdir()
    (stray / "part-00000.parquet").write_bytes(b"")
    assert_one_line_error(runner.invoke(embed_catalog_command, cli_args(manifest, ckpt, stray)),
                          "without a _manifest.json", "--overwrite")
    if not torch.cuda.is_available():
        assert_one_line_error(runner.invoke(embed_catalog_command, cli_args(manifest, ckpt, tmp_path / "o5")
                                             + ["--device", "cuda"]), "no CUDA device")


def test_registered_in_ctl():
    import click

    from jobs.cli import main

    assert main.get_command(click.Context(main), "embed-catalog") is embed_catalog_command
