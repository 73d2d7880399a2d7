"""The image formats the data commands take in, named as Pillow names them, with Pillow's file suffixes."""
from __future__ import annotations

from PIL import Image

# Raster formats Pillow decodes without extra software; every later stage (embed-catalog, ctl-retrieve)
# opens images with Pillow, so a catalogue may hold any of them.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# File suffixes of those formats as Pillow registers them (.jpg .jpeg .jpe .jfif .png .apng .tif .tiff ...).
IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS)
# The suffix the image cache gives an object of each format; any other format is stored as its lowercase name.
_CACHE_SUFFIXES = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


def cache_suffix(fmt: str) -> str:
    """The suffix (no dot) of a cached image in Pillow format `fmt`: "JPEG" -> "jpg", "TIFF" -> "tiff"."""
    return _CACHE_SUFFIXES.get(fmt, fmt.lower())
