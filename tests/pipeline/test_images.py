"""load_image: every kind of bad or unusual file becomes RGB pixels or an ImageError naming the problem."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import images
from pipeline.images import ImageError, image_to_tensor, load_image
from tests.helpers import photo, png_header

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)          # h=40, w=48
SMOOTH = np.stack([*np.meshgrid(np.linspace(0, 255, 48), np.linspace(0, 255, 40)), np.full((40, 48), 128.0)],
                  axis=-1).astype(np.uint8)                     # lossy codecs keep a smooth image close


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def reason(source) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source)
    return str(info.value)


# -- refused ------------------------------------------------------------------------------------

def test_missing_file_and_folder(tmp_path):
    assert reason(tmp_path / "nope.jpg") == f"{tmp_path / 'nope.jpg'}: no such file"
    assert "is a folder" in reason(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("hello, I am text\n")
    assert reason(path) == f"{path}: not an image"
    assert reason(b"") == "<bytes>: not an image"


def test_truncated_jpeg_and_png(tmp_path):
    jpeg = encode(Image.fromarray(RGB), "JPEG", quality=90)
    path = tmp_path / "half.jpg"
    path.write_bytes(jpeg[: len(jpeg) // 2])
    assert reason(path) == f"{path}: truncated image"
    png = encode(Image.fromarray(RGB), "PNG")
    assert "truncated image" in reason(png[: len(png) // 2])


def test_decompression_bomb_and_absurd_size():
    assert "decompression bomb" in reason(png_header(100_000, 100_000))
    assert "9000x9000 pixels exceeds the 64,000,000 pixel limit" in reason(png_header(9_000, 9_000))


def test_pixel_limit_is_the_module_constant(monkeypatch):
    data = encode(Image.fromarray(RGB), "PNG")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    assert "48x40 pixels exceeds the 1,000 pixel limit" in reason(data)


@pytest.mark.parametrize("width, height", [(1, 1), (1, 7), (5, 1), (4, 4)])
def test_tiny_images_decode_and_resize_like_any_other(width, height):
    img = load_image(encode(Image.fromarray(RGB[:height, :width]), "PNG"))
    assert img.size == (width, height) and np.array_equal(np.asarray(img), RGB[:height, :width])
    x = image_to_tensor(img, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
    if width == height == 1:   # one pixel stretched over the whole input
        assert (x == torch.from_numpy(RGB[0, 0].copy()).view(3, 1, 1)).all()


# -- converted ------------------------------------------------------------------------------------

def test_rgb_jpeg_from_path_and_bytes(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(RGB).save(path)
    from_path, from_bytes = load_image(path), load_image(path.read_bytes())
    assert from_path.mode == "RGB" and np.array_equal(np.asarray(from_path), RGB)
    assert np.array_equal(np.asarray(from_bytes), RGB)


def test_cmyk_jpeg_becomes_rgb_with_the_same_colours():
    data = encode(Image.fromarray(SMOOTH).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = load_image(data)
    assert img.mode == "RGB" and img.size == (48, 40)
    assert np.abs(np.asarray(img, dtype=int) - SMOOTH).mean() < 3


def test_16_bit_png_is_scaled_not_clipped():
    grey = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (40, 1))
    data = encode(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_image(data))
    assert out.shape == (40, 48, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[..., 0], grey / 257.0, atol=1.01)    # full range kept, no clip at 255
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_palette_png():
    data = encode(Image.fromarray(SMOOTH).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    img = load_image(data)
    assert img.mode == "RGB" and np.abs(np.asarray(img, dtype=int) - SMOOTH).mean() < 6


def test_palette_with_transparency_and_rgba_flatten_on_white():
    rgba = np.dstack([RGB, np.full((40, 48), 255, np.uint8)])
    rgba[:, :20, 3] = 0
    out = np.asarray(load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert (out[:, :20] == 255).all() and np.array_equal(out[:, 20:], RGB[:, 20:])
    pal = Image.fromarray(RGB[:, :, 0], "L").convert("P")
    pal.info["transparency"] = int(RGB[0, 0, 0])
    out = np.asarray(load_image(encode(pal, "PNG", transparency=int(RGB[0, 0, 0]))))
    assert out.shape == (40, 48, 3) and (out[0, 0] == 255).all()


def test_greyscale_with_alpha():
    la = Image.fromarray(np.dstack([RGB[..., 0], np.full((40, 48), 255, np.uint8)]), "LA")
    out = np.asarray(load_image(encode(la, "PNG")))
    assert np.array_equal(out[..., 1], RGB[..., 0])


@pytest.mark.parametrize("orientation, turn", [
    (3, lambda im: im.rotate(180)),
    (6, lambda im: im.rotate(-90, expand=True)),      # stored on its side: turn 90 degrees clockwise
    (8, lambda im: im.rotate(90, expand=True)),
    (2, lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
])
def test_exif_orientation_is_applied(orientation, turn):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(RGB), "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as raw:
        expected = turn(raw.convert("RGB"))
    img = load_image(data)
    assert img.size == expected.size
    assert np.array_equal(np.asarray(img), np.asarray(expected))


def test_image_to_tensor():
    t = image_to_tensor(Image.fromarray(RGB), 32)
    assert t.dtype == torch.uint8 and t.shape == (3, 32, 32) and t.is_contiguous()
    same = image_to_tensor(Image.fromarray(RGB).resize((32, 32), Image.BILINEAR), 32)
    assert torch.equal(t, same)


# -- a scene query's decode (load_scene) ---------------------------------------------------------

def test_query_draft_floor_is_four_times_the_input():
    assert images.query_draft_floor(224) == 896 and images.query_draft_floor(300) == 1200


@pytest.mark.parametrize("size", [(256, 256), (1790, 1400)])
def test_a_scene_under_twice_the_floor_decodes_to_the_exact_pixels(size):
    data = photo(*size)
    assert np.array_equal(np.asarray(images.load_scene(data, 224)), np.asarray(load_image(data)))


def test_a_large_scene_jpeg_is_dct_scaled_and_resizes_close_to_the_exact_decode():
    data = photo(2000, 1840)
    scaled, exact = images.load_scene(data, 224), load_image(data)
    assert scaled.size == (1000, 920) and exact.size == (2000, 1840)   # halved: a quarter would be under 896
    assert images.load_scene(data, 224, exact=True).size == (2000, 1840)
    diff = np.abs(images.image_to_array(scaled, 224).astype(int) - images.image_to_array(exact, 224).astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 4, (diff.mean(), diff.max())   # measured 0.17 and 2
    assert images.load_scene(photo(4000, 3600), 224).size == (1000, 900)   # a quarter: both sides still >= 896


def test_other_formats_are_never_scaled():
    data = photo(2000, 1840, "PNG")
    assert np.array_equal(np.asarray(images.load_scene(data, 224)), np.asarray(load_image(data)))
