"""Photographic effects on a PIL canvas: drop shadows, tone curves, sensor noise."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops, ImageFilter


def drop_shadow(canvas: Image.Image, alpha: np.ndarray, left: int, top: int, radius: float, strength: float) -> None:
    """Darken the canvas under a blurred copy of `alpha` (uint8) placed at (left, top)."""
    pad = int(math.ceil(2 * radius)) + 1
    big = Image.fromarray(np.pad((alpha * strength).astype(np.uint8), pad)).filter(ImageFilter.BoxBlur(radius))
    canvas.paste((0, 0, 0), (left - pad, top - pad, left - pad + big.width, top - pad + big.height), big)


def point_table(gain, offset=0.0, bands: int = 3) -> list[int]:
    """A PIL point() table computing v * gain + offset (per band when gain/offset have `bands` entries)."""
    v = np.arange(256, dtype=np.float64)[None, :]
    g = np.broadcast_to(np.asarray(gain, np.float64).reshape(-1, 1), (bands, 1))
    o = np.broadcast_to(np.asarray(offset, np.float64).reshape(-1, 1), (bands, 1))
    return np.clip(v * g + o + 0.5, 0, 255).astype(np.int64).ravel().tolist()


_NOISE_TILE = 512
_noise_tiles: dict[int, tuple[Image.Image, Image.Image]] = {}


def add_noise(img: Image.Image, rng: np.random.Generator, amplitude: int) -> np.ndarray:
    """Add uniform noise in [-amplitude, amplitude]: a crop, at a random offset, of a fixed-seed tile."""
    if amplitude not in _noise_tiles:
        tile_rng = np.random.default_rng([0xC7, amplitude])
        noise = tile_rng.integers(-amplitude, amplitude + 1, (_NOISE_TILE, _NOISE_TILE, 3))
        _noise_tiles[amplitude] = (Image.fromarray(np.maximum(noise, 0).astype(np.uint8), "RGB"),
                                   Image.fromarray(np.maximum(-noise, 0).astype(np.uint8), "RGB"))
    plus, minus = _noise_tiles[amplitude]
    w, h = img.size
    reps = math.ceil(max(w, h) / _NOISE_TILE)
    if reps > 1:  # images larger than the tile: repeat it
        plus, minus = (Image.fromarray(np.tile(np.asarray(t), (reps, reps, 1))) for t in (plus, minus))
    x0, y0 = (int(v) for v in rng.integers(0, plus.width - w + 1, 2)) if plus.width > w else (0, 0)
    box = (x0, y0, x0 + w, y0 + h)
    return np.asarray(ImageChops.subtract(ImageChops.add(img, plus.crop(box)), minus.crop(box)))
