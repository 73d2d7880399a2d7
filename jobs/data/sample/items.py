"""Item rendering: an item's silhouette filled with its fabric pattern and texture, shaded, as pixels."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from jobs.data.sample.shapes import CATEGORIES, SHAPES
from jobs.data.sample.styles import Item


def _shape_masks(item: Item, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Body and detail-part masks (float32 in [0, 1], shape (h, w)), drawn at 2x and box-reduced."""
    W, H = 2 * w, 2 * h
    body, part = Image.new("L", (W, H), 0), Image.new("L", (W, H), 0)

    def pt(x: float, y: float) -> tuple[float, float]:
        return (x * (W - 1), y * (H - 1))

    SHAPES[CATEGORIES[item.category][0]].draw(ImageDraw.Draw(body), ImageDraw.Draw(part), pt, item.shape, W, H)
    body_a = np.asarray(body.reduce(2), dtype=np.float32) / 255
    part_a = np.asarray(part.reduce(2), dtype=np.float32) / 255
    return body_a, part_a


# ---------------------------------------------------------------------------------------- pattern
def _pattern(item: Item, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """The item's fabric as an (h, w, 3) float32 image; the phase is random, the style is the item's."""
    s = math.sqrt(w * h)
    f = item.freq
    px = s / f                                      # pixels per pattern cycle
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    ox, oy = (float(o) for o in rng.random(2))
    ca, sa = math.cos(item.angle), math.sin(item.angle)
    u = (ca * xx + sa * yy) / px + ox               # coordinates in pattern cycles
    v = (-sa * xx + ca * yy) / px + oy

    def soft(d):                                    # signed distance in cycles -> antialiased coverage
        return np.clip(0.5 + d * px, 0.0, 1.0)

    def band(t, width):                             # periodic band of `width` cycles around t = 0
        c = t - np.floor(t + 0.5)
        return soft(width / 2 - np.abs(c))

    duty, m2 = item.duty, None
    if item.pattern == "solid":
        m1 = np.zeros((h, w), np.float32)
    elif item.pattern == "stripes":
        m1 = band(u, duty)
        m2 = band(u - 0.5, 0.06)
    elif item.pattern == "dots":
        du = u - np.floor(u) - 0.5
        dv = v + 0.5 * (np.floor(u) % 2) - np.floor(v + 0.5 * (np.floor(u) % 2)) - 0.5
        m1 = soft(0.55 * duty - np.sqrt(du * du + dv * dv))
    elif item.pattern == "checks":
        du, dv = 0.5 - np.abs(u - np.floor(u) - 0.5), 0.5 - np.abs(v - np.floor(v) - 0.5)
        d = np.minimum(du, dv)
        parity = (np.floor(u) + np.floor(v)) % 2
        m1 = np.where(parity > 0.5, soft(d), soft(-d))
    elif item.pattern == "plaid":
        m1 = np.maximum(band(u, duty), band(v, duty)) * 0.65 + band(u, duty) * band(v, duty) * 0.35
        m2 = np.maximum(band(u - 0.5, 0.05), band(v - 0.5, 0.05))
    elif item.pattern == "zigzag":
        tri = 2 * np.abs(u - np.floor(u) - 0.5)
        m1 = band(v + 0.6 * tri, duty * 0.8)
    elif item.pattern == "waves":
        m1 = band(v + 0.25 * np.sin(2 * math.pi * u), duty)
    elif item.pattern == "noise":
        gh, gw = int(math.ceil(h / px * 1.5)) + 2, int(math.ceil(w / px * 1.5)) + 2
        grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
        n = np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255
        m1 = np.clip((n - 0.5) * 6 + 0.5, 0, 1)
        m2 = np.clip((n - 0.78) * 8 + 0.5, 0, 1)
    else:
        raise ValueError(f"unknown pattern {item.pattern!r}")
    c0, c1, c2 = (np.asarray(c, np.float32) for c in item.colors)
    rgb = c0 + m1[..., None] * (c1 - c0)
    if m2 is not None:
        rgb = rgb + m2[..., None] * (c2 - rgb)
    return rgb.astype(np.float32)


def _texture(texture: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    if texture == "grain":
        return 1 + 0.05 * rng.standard_normal((h, w), dtype=np.float32)
    if texture == "knit":
        return 1 + 0.07 * np.sin(xx * 2.1) * np.sin(yy * 1.6)
    if texture == "twill":
        return 1 + 0.06 * np.sin((xx + yy) * 1.6)
    raise ValueError(f"unknown texture {texture!r}")


def render_item(item: Item, w: int, h: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one item at (w, h) px: float32 rgb (h, w, 3) and alpha (h, w), both in [0, 1]."""
    w, h = max(int(w), 4), max(int(h), 4)
    body, part = _shape_masks(item, w, h)
    rgb = _pattern(item, w, h, rng)
    if item.texture != "smooth":
        rgb *= _texture(item.texture, w, h, rng)[..., None]
    rgb += part[..., None] * (np.asarray(item.part, np.float32) - rgb)
    alpha = np.maximum(body, part)
    shade = 1.07 - 0.16 * np.arange(h, dtype=np.float32)[:, None] / h
    if min(w, h) >= 12:                             # a darker rim reads as the object's edge
        inner = alpha.copy()
        inner[1:] = np.minimum(inner[1:], alpha[:-1])
        inner[:-1] = np.minimum(inner[:-1], alpha[1:])
        inner[:, 1:] = np.minimum(inner[:, 1:], alpha[:, :-1])
        inner[:, :-1] = np.minimum(inner[:, :-1], alpha[:, 1:])
        shade = shade * (1 - 0.3 * (alpha - inner))
    rgb *= shade[..., None]
    return np.clip(rgb, 0, 1, out=rgb), alpha


def item_image(item: Item, w: int, h: int, rng: np.random.Generator, degrees: float,
                flip: bool = False) -> Image.Image:
    """The item as an RGBA image, flipped and rotated (canvas expanded to fit)."""
    rgb, alpha = render_item(item, w, h, rng)
    rgba = np.empty(alpha.shape + (4,), np.uint8)
    rgba[..., :3] = rgb * 255 + 0.5
    rgba[..., 3] = alpha * 255 + 0.5
    img = Image.fromarray(rgba, "RGBA")
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if abs(degrees) > 0.3:
        img = img.rotate(degrees, resample=Image.BILINEAR, expand=True)
    return img
