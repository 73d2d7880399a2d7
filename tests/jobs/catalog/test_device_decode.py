"""Device decoding for embed-catalog, run on the CPU: the fallback decision, the byte reader, per-image fallback on
the bad-image set, and the CPU path's pixels and embeddings reproduced exactly."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from common.errors import InputError
from jobs.catalog.device_decode import decode_on_device, device_decodable, pillow_pass_order, read_raw, resize_on_device
from jobs.catalog.device_side import prepare
from jobs.catalog.embed_job import EmbedCatalogConfig
from pipeline.images import image_to_tensor, load_image
from tests.jobs.catalog.catalogs import SIZE, embeddings_of, make_bad_catalog, make_catalog, read_shards, run

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_which_bytes_the_device_decoder_takes_and_why_the_rest_go_to_the_cpu():
    rgb = Image.fromarray(smooth_rgb(40, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    assert device_decodable(encode(rgb)) is None
    assert device_decodable(encode(rgb.convert("L"))) is None
    assert device_decodable(encode(rgb, exif=Image.Exif().tobytes())) is None      # orientation absent: 1
    assert device_decodable(encode(rgb, exif=exif.tobytes())) == "EXIF orientation 6"
    assert device_decodable(encode(rgb.convert("CMYK"))) == "CMYK JPEG"
    assert device_decodable(encode(rgb, "PNG")) == "not a JPEG"
    assert device_decodable(b"\xff\xd8\xff\xe0 but nothing else") == "unreadable JPEG header"


def test_the_byte_reader_reads_and_hashes_without_decoding(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not even an image")
    (tmp_path / "dir.jpg").mkdir()
    ok = read_raw(3, str(tmp_path / "a.jpg"))
    assert (ok.row, ok.data, ok.reason) == (3, b"not even an image", None) and len(ok.sha256) == 64
    assert read_raw(1, str(tmp_path / "missing.jpg")).reason == "no such file"
    assert read_raw(2, str(tmp_path / "dir.jpg")).reason == "is a folder, not an image"


def test_a_refused_image_does_not_sink_its_batch():
    good = encode(Image.fromarray(smooth_rgb(30, 20)))
    out = decode_on_device([good, good[: len(good) // 2], good], CPU)
    assert out[1] is None and out[0].shape == out[2].shape == (3, 30, 20)


@pytest.mark.parametrize("hw, size", [((48, 40), 32), ((300, 200), 224), ((100, 100), 224), ((1, 1), 16),
                                      ((352, 22), 16), ((306, 27), 300), ((5, 4), 3), ((224, 224), 224)])
def test_device_decode_and_resize_equal_the_cpu_paths_pixels(hw, size):
    data = encode(Image.fromarray(smooth_rgb(*hw)), quality=95)
    cpu = image_to_tensor(load_image(data), size)
    assert torch.equal(resize_on_device(decode_on_device([data], CPU), size)[0], cpu)


def test_the_resize_follows_pillow_bit_for_bit_on_noise_of_any_shape():
    rng = np.random.default_rng(0)
    shapes = [(int(rng.integers(1, 400)), int(rng.integers(1, 400))) for _ in range(12)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    out = resize_on_device([torch.from_numpy(a.transpose(2, 0, 1).copy()) for a in images], 48)
    for a, got in zip(images, out, strict=True):
        assert torch.equal(got, image_to_tensor(Image.fromarray(a), 48))
    # Pillow's rounding between the passes makes the order visible: both orders occur among such shapes.
    assert {pillow_pass_order(h, w, 48) for h, w in shapes} == {"hv", "vh"}


def test_every_bad_image_falls_back_and_is_rejected_for_the_cpu_paths_reason(tmp_path):
    manifest, reasons = make_bad_catalog(tmp_path / "cat")
    table = pq.read_table(manifest)
    paths = [str(manifest.parent / p) for p in table.column("image_path").to_pylist()]
    raws = [read_raw(i, p) for i, p in enumerate(paths)]
    with ThreadPoolExecutor(2) as pool:
        batch = prepare(raws, SIZE, CPU, pool)
    ids = table.column("product_id").to_pylist()
    rejected = {ids[row]: reason for row, reason in batch.rejects}
    assert set(rejected) == set(reasons)
    for pid, reason in reasons.items():
        assert reason in rejected[pid], (pid, rejected[pid])
    assert [ids[r] for r in batch.rows] == [p for p in ids if p not in reasons]
    assert batch.images.shape == (len(batch.rows), 3, SIZE, SIZE) and batch.fallbacks >= 5   # png, cmyk, exif, ...
    for i, row in enumerate(batch.rows):
        assert torch.equal(batch.images[i], image_to_tensor(load_image(paths[row]), SIZE)), ids[row]


def test_the_device_path_embeds_like_the_cpu_path(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 23)
    cpu = run(manifest, ckpt, tmp_path / "cpu", decode="cpu")
    device = run(manifest, ckpt, tmp_path / "device", decode="gpu", workers=2)
    assert (cpu["decode"], device["decode"], device["embedded"]) == ("cpu", "gpu", 23)
    a, b = read_shards(tmp_path / "cpu"), read_shards(tmp_path / "device")
    assert a.column("product_id").to_pylist() == b.column("product_id").to_pylist()
    assert a.column("image_sha256").to_pylist() == b.column("image_sha256").to_pylist()
    np.testing.assert_allclose(embeddings_of(b), embeddings_of(a), atol=1e-6)   # the same pixels in


def test_the_device_path_keeps_the_cpu_paths_rejects(tmp_path, ckpt):
    manifest, reasons = make_bad_catalog(tmp_path / "cat")
    summary = run(manifest, ckpt, tmp_path / "emb", decode="gpu", shard_size=5, workers=2)
    assert (summary["embedded"], summary["rejected"]) == (7, 6)
    lines = (tmp_path / "emb" / "rejects.jsonl").read_text().splitlines()
    assert len(lines) == len(reasons)


def test_decode_settings():
    assert EmbedCatalogConfig().decode_on(CPU) == "cpu"
    assert EmbedCatalogConfig().decode_on(torch.device("cuda")) == "both"        # nvJPEG and Pillow at once
    assert EmbedCatalogConfig(decode="gpu").decode_on(torch.device("cuda")) == "gpu"
    assert EmbedCatalogConfig(decode="both").decode_on(CPU) == "both"             # forced: how CPU tests run it
    assert EmbedCatalogConfig(engine="ray", workers=1).decode_on(torch.device("cuda")) == "cpu"
    for decode in ("gpu", "both"):
        with pytest.raises(InputError, match="run with --engine local"):
            EmbedCatalogConfig(engine="ray", workers=1, decode=decode)
    with pytest.raises(InputError, match="decode must be one of"):
        EmbedCatalogConfig(decode="nvjpeg")


@pytest.mark.slow
def test_a_compiled_backbone_embeds_like_the_eager_one(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 8)
    eager = run(manifest, ckpt, tmp_path / "eager", batch_size=8)
    compiled = run(manifest, ckpt, tmp_path / "compiled", batch_size=8, compile=True)
    assert eager["compile_seconds"] is None and compiled["compile_seconds"] > 0
    np.testing.assert_allclose(embeddings_of(read_shards(tmp_path / "compiled")),
                               embeddings_of(read_shards(tmp_path / "eager")), atol=1e-4)
