"""embed-catalog's decode modes end to end on CPU: both decoders at once embed like the CPU path (rejects included);
a padded batch embeds like an unpadded one; a compiled run never recompiles; JPEG draft mode stays close."""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.catalog.catalog_images import decode_row, load_catalog_table
from jobs.catalog.embed_job import EmbedCatalogConfig, EmbedJob, StaticBatch, forward
from jobs.catalog.local_engine import open_engine
from pipeline.checkpoint import load_checkpoint
from tests.jobs.catalog.catalogs import SIZE, embeddings_of, make_bad_catalog, make_catalog, read_shards, run

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def test_both_decoders_at_once_embed_like_the_cpu_path(tmp_path, ckpt, caplog):
    manifest = make_catalog(tmp_path / "cat", 37)
    cpu = run(manifest, ckpt, tmp_path / "cpu", decode="cpu", workers=1)
    with caplog.at_level(logging.INFO, logger="jobs.catalog.local_engine"):
        both = run(manifest, ckpt, tmp_path / "both", decode="both", workers=2)
    assert (cpu["decode"], both["decode"], both["embedded"]) == ("cpu", "both", 37)
    a, b = read_shards(tmp_path / "cpu"), read_shards(tmp_path / "both")
    assert b.column("product_id").to_pylist() == a.column("product_id").to_pylist() == [f"p{i:04d}" for i in range(37)]
    assert b.column("image_sha256").to_pylist() == a.column("image_sha256").to_pylist()
    np.testing.assert_allclose(embeddings_of(b), embeddings_of(a), atol=1e-6)      # the same pixels in
    split = next(r.decode_split for r in caplog.records if hasattr(r, "decode_split"))
    assert set(split) == {"pillow", "device"} and sum(split.values()) == 37 and min(split.values()) > 0


def test_both_decoders_keep_the_cpu_paths_rejects(tmp_path, ckpt):
    manifest, reasons = make_bad_catalog(tmp_path / "cat")
    cpu = run(manifest, ckpt, tmp_path / "cpu", decode="cpu", shard_size=5, batch_size=2, workers=1)
    both = run(manifest, ckpt, tmp_path / "both", decode="both", shard_size=5, batch_size=2, workers=1)
    assert (both["embedded"], both["rejected"]) == (cpu["embedded"], cpu["rejected"]) == (7, 6)
    rejects = [json.loads(line) for line in (tmp_path / "both" / "rejects.jsonl").read_text().splitlines()]
    assert [r["product_id"] for r in rejects] == list(reasons)
    for r in rejects:
        assert reasons[r["product_id"]] in r["reason"], r
    np.testing.assert_allclose(embeddings_of(read_shards(tmp_path / "both")),
                               embeddings_of(read_shards(tmp_path / "cpu")), atol=1e-6)


def test_an_engine_closed_before_its_first_batch_stops_every_decoder(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 40)
    table = load_catalog_table(manifest, None)
    config = EmbedCatalogConfig(batch_size=4, workers=2, device="cpu", decode="both", image_size=SIZE)
    job = EmbedJob(table, np.arange(len(table)), load_checkpoint(ckpt), ckpt, SIZE, CPU, config)
    run = open_engine(job)
    pillow, device = run._sides
    workers = list(pillow.procs)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    run.close()                                        # never iterated: a generator's own finally would not run
    assert all(w.exitcode is not None for w in workers) and pillow.procs == []
    assert not any(t.is_alive() for t in pillow._threads) and not device._thread.is_alive()


def test_a_padded_batch_embeds_like_the_unpadded_one(model):
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    static = StaticBatch(8)
    with torch.inference_mode():
        plain = forward(model, images, CPU)
        padded = forward(model, images, CPU, static)
        assert static._buffer.shape == (8, 3, SIZE, SIZE)
        again = forward(model, images[:1], CPU, static)     # a shorter batch reuses the buffer, stale rows and all
    assert padded.shape == plain.shape == (3, model.dim)
    np.testing.assert_allclose(padded.numpy(), plain.numpy(), atol=1e-5)
    np.testing.assert_allclose(again.numpy(), plain[:1].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="does not fit the static batch of 8"):
        static.fill(torch.zeros((9, 3, SIZE, SIZE), dtype=torch.uint8))


@pytest.mark.slow
def test_a_compiled_run_never_recompiles_and_embeds_like_the_eager_one(tmp_path, ckpt):
    import torch._dynamo

    manifest, reasons = make_bad_catalog(tmp_path / "cat")       # 13 rows, batch 4: a short last batch and
    eager = run(manifest, ckpt, tmp_path / "eager", batch_size=4)  # batches shortened by rejects
    torch._dynamo.reset()
    # a recompile fails the run; torch's own patch restores the setting (a monkeypatch's undo left it hidden in
    # torch 2.14, and the next compiling test in the process failed on reading it)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = run(manifest, ckpt, tmp_path / "compiled", batch_size=4, compile=True)
    assert eager["compile_seconds"] is None and compiled["compile_seconds"] > 0
    assert compiled["embedded"] == eager["embedded"] == 7
    np.testing.assert_allclose(embeddings_of(read_shards(tmp_path / "compiled")),
                               embeddings_of(read_shards(tmp_path / "eager")), atol=1e-4)


def _photo(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(smooth + rng.integers(-4, 5, smooth.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_jpeg_draft_scales_only_where_twice_the_input_size_remains(tmp_path):
    size = 64                                                # draft floor: 128 px
    for (w, h), draft in [((300, 260), True), ((250, 300), False), ((100, 90), False)]:
        path = tmp_path / f"{w}x{h}.jpg"
        path.write_bytes(_photo(w, h))
        exact, _, sha = decode_row(str(path), size)
        drafted, _, sha_d = decode_row(str(path), size, draft=True)
        assert sha == sha_d
        diff = (exact.int() - drafted.int()).abs()
        if draft:                                            # 300x260 decodes at 150x130, then resizes
            assert 0 < float(diff.float().mean()) < 2.0 and int(diff.max()) < 40
        else:                                                # 250 // 128 = 1: decoded at full size, same pixels
            assert int(diff.max()) == 0
