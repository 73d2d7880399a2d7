"""The image formats a catalogue folder may hold: every suffix accepted is one Pillow decodes, TIFF included."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from jobs.data.image_formats import FORMATS, IMAGE_SUFFIXES, cache_suffix


def test_common_suffixes_are_accepted():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= IMAGE_SUFFIXES
    assert not {".txt", ".pdf", ".json", ".csv"} & IMAGE_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


@pytest.mark.parametrize("suffix", sorted(IMAGE_SUFFIXES))
def test_every_accepted_suffix_round_trips_through_pillow(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    Image.new("RGB", (6, 4), (200, 10, 10)).save(path)
    with Image.open(path) as img:
        img.load()
        assert img.format in FORMATS and img.size == (6, 4)


def test_cache_suffixes():
    assert [cache_suffix(f) for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO")] == [
        "jpg", "png", "webp", "gif", "bmp", "tiff", "ico"]
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="TIFF")
    assert cache_suffix(Image.open(io.BytesIO(buf.getvalue())).format) == "tiff"
