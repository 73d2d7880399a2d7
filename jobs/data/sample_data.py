"""Generate the embedded sample of "looks" (scenes, catalogue shots, STL-format pairs) for `ctl sample-data`."""
# How the data is made, and why compatibility is learnable but not trivial:
#
# * Every scene is a *look*: it draws a latent style (a palette of four related colours from a
#   colour scheme, pattern families, pattern scale and orientation, a fabric texture). The scene is
#   split into two *zones* (upper/lower or left/right). Each zone derives its own sub-palette and
#   pattern from the look (zone 0 leads with colours 0/1, zone 1 with colour 2; the two zones may
#   use different pattern families), and an item takes the style of the zone it is placed in. So
#   the items NEAR a product predict it better than the scene as a whole: attention over scene
#   regions conditioned on the product's category has something to find.
# * Each item (3-5 per scene, distinct categories) is its zone's style plus its own variation
#   (hue/saturation/value jitter, which colour is dominant, pattern phase and orientation, a
#   category silhouette with per-item shape parameters), drawn with PIL and filled by compositing
#   a numpy pattern texture through the silhouette mask.
# * A product that appears in a scene is the SAME item identity re-rendered as a catalogue shot:
#   light plain background, centred, other scale/rotation/flip, another pattern phase, neutral
#   lighting. Its pixels are never copied from the scene.
# * Distractors (products in no scene, most of the catalogue) are items of fresh looks drawn from
#   the same distribution, so a same-category negative is as plausible as the positive: a model
#   must match style (colour, pattern, texture), not category.
# * Scenes add nuisance: a wall/floor background in unrelated colours, clutter shapes, a faint
#   mannequin in "outfit" layouts, defocus blur, drop shadows, small item rotations, gradient
#   lighting, brightness/contrast/colour-cast jitter and sensor noise.
# Every random draw comes from a generator seeded by (seed, stream, item index), never from global
# state, so the output does not depend on the number of workers or on the order of the work.
from __future__ import annotations

import colorsys
import hashlib
import json
import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from common.defaults import SAMPLE_DIR
from common.files import atomic_path, write_json_atomic, write_text_atomic

GENERATOR_VERSION = 2

DONE_FILE = "_done.json"
PAIRS_FILE = "pairs.jsonl"
CATEGORIES_FILE = "categories.json"
CATALOG_FILE = "catalog.parquet"
SCENE_DIR = Path("images") / "scenes"
PRODUCT_DIR = Path("images") / "products"

# (short name, STL-style category path); the first `--categories` entries are used.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("Shoes", "Apparel & Accessories|Shoes"),
    ("Handbags", "Apparel & Accessories|Handbags, Wallets & Cases"),
    ("Pants", "Apparel & Accessories|Clothing|Pants"),
    ("Shirts & Tops", "Apparel & Accessories|Clothing|Shirts & Tops"),
    ("Sunglasses", "Apparel & Accessories|Clothing Accessories|Sunglasses"),
    ("Hats", "Apparel & Accessories|Clothing Accessories|Hats"),
    ("Necklaces", "Apparel & Accessories|Jewelry|Necklaces"),
    ("Coats & Jackets", "Apparel & Accessories|Clothing|Outerwear|Coats & Jackets"),
    ("Skirts", "Apparel & Accessories|Clothing|Skirts"),
    ("Shorts", "Apparel & Accessories|Clothing|Shorts"),
    ("Earrings", "Apparel & Accessories|Jewelry|Earrings"),
    ("Scarves", "Apparel & Accessories|Clothing Accessories|Scarves & Shawls"),
    ("Belts", "Apparel & Accessories|Clothing Accessories|Belts"),
    ("Watches", "Apparel & Accessories|Jewelry|Watches"),
)

PATTERNS = ("solid", "stripes", "dots", "checks", "plaid", "zigzag", "waves", "noise")
TEXTURES = ("smooth", "grain", "knit", "twill")

# Random streams: each is seeded with (seed, stream, index...).
_S_PLAN, _S_SCENE, _S_PRODUCT, _S_DISTRACTOR = 1, 2, 3, 4


def _rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *index])


def _signature(*parts) -> str:
    """A 32-hex-character id (like STL's signatures), fixed by its parts."""
    return hashlib.md5("/".join(["ctl-sample", *map(str, parts)]).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- style
HSV = tuple[float, float, float]
RGB = tuple[float, float, float]

_NEUTRALS: tuple[HSV, ...] = (
    (0.0, 0.0, 0.10), (0.0, 0.0, 0.95), (0.11, 0.22, 0.88), (0.0, 0.0, 0.55),
    (0.62, 0.55, 0.25), (0.08, 0.55, 0.62),
)
# Hue offsets of the four look colours per scheme; zone 0 leads with colours 0/1, zone 1 with 2.
_SCHEMES = (
    (0.0, 0.06, 0.13, -0.07),     # analogous
    (0.0, 0.03, 0.50, 0.47),      # complementary
    (0.0, 1 / 3, 2 / 3, 0.02),    # triadic
    (0.0, 0.42, 0.58, 0.50),      # split complementary
    (0.0, 0.0, 0.0, 0.0),         # monochrome (values differ)
)


@dataclass(frozen=True)
class ZoneStyle:
    colors: tuple[HSV, HSV, HSV]  # dominant, secondary, accent
    pattern: str
    freq: float                   # pattern cycles per sqrt(item area)
    angle: float                  # radians
    duty: float                   # share of a cycle covered by the secondary colour


@dataclass(frozen=True)
class Look:
    zones: tuple[ZoneStyle, ZoneStyle]
    texture: str


@dataclass(frozen=True)
class Item:
    """One product identity: rendered in its scene and again, differently, as a catalogue shot."""
    category: int
    aspect: float                       # width / height of the silhouette box
    shape: tuple[float, float, float, float]
    colors: tuple[RGB, RGB, RGB]        # pattern colours: dominant, secondary, accent
    part: RGB                           # colour of detail parts (sole, handle, lenses, watch face)
    pattern: str
    freq: float
    angle: float
    duty: float
    texture: str


def _clip01(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return float(min(max(x, lo), hi))


def _sample_look(rng: np.random.Generator) -> Look:
    h0 = rng.random()
    scheme = int(rng.integers(len(_SCHEMES)))
    s0, v0 = rng.uniform(0.35, 0.95), rng.uniform(0.4, 0.95)
    cols: list[HSV] = []
    for i, off in enumerate(_SCHEMES[scheme]):
        if scheme == 4:  # monochrome: spread values and saturations instead of hues
            s, v = s0 * (1.0, 0.55, 0.8, 0.35)[i], v0 + (0.0, 0.25, -0.3, -0.15)[i]
        else:
            s, v = s0 + rng.normal(0, 0.12), v0 + rng.normal(0, 0.15)
        cols.append(((h0 + off + rng.normal(0, 0.01)) % 1.0, _clip01(s, 0.12), _clip01(v, 0.18)))
    if rng.random() < 0.35:
        cols[3] = _NEUTRALS[int(rng.integers(len(_NEUTRALS)))]
    if rng.random() < 0.15:
        cols[1] = _NEUTRALS[int(rng.integers(len(_NEUTRALS)))]
    pat0 = PATTERNS[int(rng.integers(len(PATTERNS)))]
    pat1 = pat0 if rng.random() < 0.5 else PATTERNS[int(rng.integers(len(PATTERNS)))]
    freq = math.exp(rng.uniform(math.log(2.5), math.log(7.5)))
    angle = float(rng.choice([0.0, math.pi / 4, math.pi / 2, -math.pi / 6, math.pi / 8]))
    duty = rng.uniform(0.3, 0.55)
    zones = []
    for z, (pat, lead) in enumerate(((pat0, (0, 1, 3)), (pat1, (2, 0 if rng.random() < 0.5 else 1, 3)))):
        zones.append(ZoneStyle(
            colors=tuple(cols[i] for i in lead),
            pattern=pat,
            freq=freq * rng.uniform(0.8, 1.25),
            angle=angle + (rng.normal(0, 0.3) if z else 0.0),
            duty=_clip01(duty + rng.normal(0, 0.05), 0.25, 0.6),
        ))
    return Look(zones=tuple(zones), texture=TEXTURES[int(rng.integers(len(TEXTURES)))])


def _hsv_rgb(c: HSV) -> RGB:
    return tuple(float(x) for x in colorsys.hsv_to_rgb(*c))


def _make_item(rng: np.random.Generator, look: Look, zone: int, category: int) -> Item:
    z = look.zones[zone]
    cols = [((h + rng.normal(0, 0.02)) % 1.0, _clip01(s + rng.normal(0, 0.05)), _clip01(v + rng.normal(0, 0.05), 0.08))
            for h, s, v in z.colors]
    if rng.random() < 0.25:
        cols[0], cols[1] = cols[1], cols[0]
    name = CATEGORIES[category][0]
    if name == "Sunglasses":
        part = (cols[0][0], cols[0][1] * 0.6, 0.16)       # lenses: dark, tinted by the dominant colour
    elif name == "Watches":
        part = (cols[0][0], 0.06, 0.93)                    # a light face
    else:
        part = cols[2]
    return Item(
        category=category,
        aspect=SHAPES[name].aspect * math.exp(rng.normal(0, 0.08)),
        shape=tuple(float(x) for x in rng.random(4)),
        colors=tuple(_hsv_rgb(c) for c in cols),
        part=_hsv_rgb(part),
        pattern=z.pattern,
        freq=float(z.freq * rng.uniform(0.85, 1.15)),
        angle=float(z.angle + rng.normal(0, 0.12) + (math.pi / 2 if rng.random() < 0.2 else 0.0)),
        duty=z.duty,
        texture=look.texture,
    )


# ----------------------------------------------------------------------------------------- shapes
# Each drawer gets ImageDraw objects for the body (pattern-filled) and the detail parts, a function
# mapping unit-box coordinates to pixels, the item's shape parameters p (4 floats in [0, 1]) and
# the pixel size. Shapes touch all four sides of their box, so the box is the tight bounding box.
Pt = Callable[[float, float], tuple[float, float]]


@dataclass(frozen=True)
class Shape:
    aspect: float     # typical width / height
    rank: float       # vertical place on a body, for "outfit" layouts (0 = head)
    draw: Callable
    area: float = 1.0  # relative size in a scene (accessories are smaller)


def _shoe(b, a, pt: Pt, p, W, H):
    top = 0.12 + 0.3 * p[0]
    if p[1] > 0.6:  # pump with a heel
        poly = [pt(0.0, top), pt(0.2, top + 0.08), pt(0.45, 0.42 + 0.15 * p[2]), pt(0.78, 0.55),
                pt(0.97, 0.7), pt(1.0, 0.9), pt(0.72, 0.94), pt(0.45, 0.74), pt(0.2, 0.68),
                pt(0.14, 1.0), pt(0.03, 1.0), pt(0.02, 0.66)]
        b.polygon(poly, fill=255)
        a.polygon([pt(0.03, 0.7), pt(0.17, 0.7), pt(0.14, 1.0), pt(0.03, 1.0)], fill=255)
    else:           # sneaker / boot
        poly = [pt(0.0, top), pt(0.3, top), pt(0.42, 0.32 + 0.2 * p[2]), pt(0.7, 0.48),
                pt(0.93, 0.6), pt(1.0, 0.8), pt(1.0, 1.0), pt(0.0, 1.0)]
        b.polygon(poly, fill=255)
        a.rectangle([pt(0.0, 0.86), pt(1.0, 1.0)], fill=255)
        for i in range(3):
            x = 0.38 + 0.1 * i
            a.line([pt(x, 0.4 + 0.06 * i), pt(x + 0.07, 0.46 + 0.06 * i)], fill=255, width=max(1, int(0.02 * W)))


def _handbag(b, a, pt: Pt, p, W, H):
    top, taper = 0.36 + 0.12 * p[0], 0.14 * p[1]
    inset = 0.16 + 0.1 * p[2]
    a.ellipse([pt(inset, 0.0), pt(1 - inset, 2 * top)], outline=255, width=max(2, int(0.06 * W)))
    body = [pt(taper, top), pt(1 - taper, top), pt(1.0, 1.0), pt(0.0, 1.0)]
    b.polygon(body, fill=255)
    a.polygon(body, fill=0)
    a.rectangle([pt(0.44, top + 0.05), pt(0.56, top + 0.16)], fill=255)


def _pants(b, a, pt: Pt, p, W, H):
    flare, crotch = 0.08 * p[0], 0.28 + 0.1 * p[1]
    b.polygon([pt(0.08, 0.0), pt(0.92, 0.0), pt(1.0 - 0.08 + flare, 1.0), pt(0.56 - flare, 1.0),
               pt(0.5, crotch), pt(0.44 + flare, 1.0), pt(0.0 + 0.08 - flare, 1.0)], fill=255)
    a.rectangle([pt(0.08, 0.0), pt(0.92, 0.06)], fill=255)


def _top(b, a, pt: Pt, p, W, H):
    sl = 0.22 + 0.2 * p[0]
    arm = 0.3 + 0.05 * p[1]
    b.polygon([pt(0.3, 0.0), pt(0.0, 0.18), pt(0.1, 0.18 + sl), pt(0.22, arm), pt(0.2, 1.0),
               pt(0.8, 1.0), pt(0.78, arm), pt(0.9, 0.18 + sl), pt(1.0, 0.18), pt(0.7, 0.0)], fill=255)
    neck = 0.1 + 0.08 * p[2]
    b.ellipse([pt(0.5 - neck, -0.12), pt(0.5 + neck, 0.12)], fill=0)
    a.arc([pt(0.5 - neck, -0.12), pt(0.5 + neck, 0.12)], 0, 180, fill=255, width=max(1, int(0.03 * W)))


def _sunglasses(b, a, pt: Pt, p, W, H):
    t = 0.05 + 0.04 * p[0]
    lens_top = 0.12 * p[1]
    for x0, x1 in ((0.0, 0.44), (0.56, 1.0)):
        b.ellipse([pt(x0, lens_top), pt(x1, 1.0)], fill=255)
        a.ellipse([pt(x0 + t, lens_top + t * 2.5), pt(x1 - t, 1.0 - t * 2.5)], fill=255)
    b.rectangle([pt(0.4, lens_top + 0.15), pt(0.6, lens_top + 0.3)], fill=255)
    b.rectangle([pt(0.0, lens_top), pt(1.0, lens_top + 0.12)], fill=255)


def _hat(b, a, pt: Pt, p, W, H):
    brim = 0.55 + 0.15 * p[0]
    b.ellipse([pt(0.0, brim), pt(1.0, 1.0)], fill=255)
    if p[1] < 0.5:
        b.pieslice([pt(0.18, 0.0), pt(0.82, 2 * brim + 0.1)], 180, 360, fill=255)
        b.rectangle([pt(0.18, brim), pt(0.82, brim + 0.12)], fill=255)
    else:
        b.rounded_rectangle([pt(0.22, 0.0), pt(0.78, brim + 0.15)], radius=int(0.12 * W), fill=255)
    a.rectangle([pt(0.19, brim - 0.05), pt(0.81, brim + 0.08)], fill=255)


def _necklace(b, a, pt: Pt, p, W, H):
    n = 11 + int(6 * p[0])
    r = (0.05 + 0.025 * p[1])
    for t in np.linspace(0.05 * math.pi, 0.95 * math.pi, n):
        cx, cy = 0.5 + (0.5 - r) * math.cos(t), 0.04 + 0.62 * math.sin(t)
        b.ellipse([pt(cx - r, cy - r * 1.2), pt(cx + r, cy + r * 1.2)], fill=255)
    b.polygon([pt(0.5, 0.6), pt(0.62, 0.8), pt(0.5, 1.0), pt(0.38, 0.8)], fill=255)
    a.polygon([pt(0.5, 0.66), pt(0.57, 0.8), pt(0.5, 0.93), pt(0.43, 0.8)], fill=255)


def _coat(b, a, pt: Pt, p, W, H):
    sl = 0.75 + 0.15 * p[0]
    b.polygon([pt(0.3, 0.0), pt(0.05, 0.12), pt(0.0, sl), pt(0.14, sl), pt(0.2, 0.35), pt(0.18, 1.0),
               pt(0.82, 1.0), pt(0.8, 0.35), pt(0.86, sl), pt(1.0, sl), pt(0.95, 0.12), pt(0.7, 0.0)], fill=255)
    lap = 0.3 + 0.15 * p[1]
    a.polygon([pt(0.3, 0.0), pt(0.5, lap), pt(0.7, 0.0), pt(0.62, 0.0), pt(0.5, lap - 0.1), pt(0.38, 0.0)], fill=255)
    for i in range(3):
        y = lap + 0.08 + 0.14 * i
        a.ellipse([pt(0.47, y), pt(0.53, y + 0.04)], fill=255)


def _skirt(b, a, pt: Pt, p, W, H):
    waist = 0.22 + 0.08 * p[0]
    b.polygon([pt(waist, 0.0), pt(1 - waist, 0.0), pt(1.0, 1.0), pt(0.0, 1.0)], fill=255)
    a.rectangle([pt(waist, 0.0), pt(1 - waist, 0.08)], fill=255)


def _shorts(b, a, pt: Pt, p, W, H):
    crotch = 0.4 + 0.15 * p[0]
    b.polygon([pt(0.05, 0.0), pt(0.95, 0.0), pt(1.0, 1.0), pt(0.56, 1.0), pt(0.5, crotch),
               pt(0.44, 1.0), pt(0.0, 1.0)], fill=255)
    a.rectangle([pt(0.05, 0.0), pt(0.95, 0.1)], fill=255)


def _earrings(b, a, pt: Pt, p, W, H):
    r = 0.1 + 0.04 * p[0]
    for cx in (0.22, 0.78):
        a.ellipse([pt(cx - 0.07, 0.0), pt(cx + 0.07, 0.12)], fill=255)
        b.polygon([pt(cx, 0.1), pt(cx + r * 1.6, 0.62), pt(cx - r * 1.6, 0.62)], fill=255)
        b.ellipse([pt(cx - 0.22, 0.4), pt(cx + 0.22, 1.0)], fill=255)


def _scarf(b, a, pt: Pt, p, W, H):
    ys = np.linspace(0.0, 0.88, 12)
    left = [0.02 + 0.12 * (1 + math.sin(2 * math.pi * (1.2 * y + p[0]))) for y in ys]
    poly = [pt(x, y) for x, y in zip(left, ys)] + [pt(x + 0.7, y) for x, y in zip(left[::-1], ys[::-1])]
    b.polygon(poly, fill=255)
    x0 = left[-1]
    for i in range(8):
        x = x0 + 0.04 + 0.62 * i / 7
        a.line([pt(x, 0.86), pt(x, 1.0)], fill=255, width=max(1, int(0.025 * W)))


def _belt(b, a, pt: Pt, p, W, H):
    b.rounded_rectangle([pt(0.0, 0.22), pt(1.0, 0.78)], radius=int(0.2 * H), fill=255)
    x0 = 0.06 + 0.1 * p[0]
    a.rectangle([pt(x0, 0.0), pt(x0 + 0.16, 1.0)], outline=255, width=max(2, int(0.12 * H)))


def _watch(b, a, pt: Pt, p, W, H):
    b.rounded_rectangle([pt(0.2, 0.0), pt(0.8, 1.0)], radius=int(0.1 * W), fill=255)
    b.ellipse([pt(0.0, 0.22), pt(1.0, 0.78)], fill=255)
    a.ellipse([pt(0.12, 0.29), pt(0.88, 0.71)], fill=255)
    angle = 2 * math.pi * p[0]
    a.line([pt(0.5, 0.5), pt(0.5 + 0.25 * math.cos(angle), 0.5 + 0.12 * math.sin(angle))], fill=0,
           width=max(1, int(0.05 * W)))
    a.line([pt(0.5, 0.5), pt(0.5, 0.36)], fill=0, width=max(1, int(0.05 * W)))


SHAPES: dict[str, Shape] = {
    "Shoes": Shape(2.0, 6.0, _shoe),
    "Handbags": Shape(1.0, 4.2, _handbag),
    "Pants": Shape(0.5, 5.0, _pants),
    "Shirts & Tops": Shape(1.05, 3.0, _top),
    "Sunglasses": Shape(2.6, 1.0, _sunglasses, 0.65),
    "Hats": Shape(1.6, 0.0, _hat),
    "Necklaces": Shape(1.2, 2.0, _necklace, 0.8),
    "Coats & Jackets": Shape(0.8, 3.2, _coat),
    "Skirts": Shape(1.0, 4.5, _skirt),
    "Shorts": Shape(1.2, 4.6, _shorts),
    "Earrings": Shape(1.1, 1.5, _earrings, 0.6),
    "Scarves": Shape(0.5, 2.5, _scarf),
    "Belts": Shape(4.0, 4.0, _belt, 0.7),
    "Watches": Shape(0.55, 3.8, _watch, 0.6),
}


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


def _item_image(item: Item, w: int, h: int, rng: np.random.Generator, degrees: float,
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


def _shadow(canvas: Image.Image, alpha: np.ndarray, left: int, top: int, radius: float, strength: float) -> None:
    """Darken the canvas under a blurred copy of `alpha` (uint8) placed at (left, top)."""
    pad = int(math.ceil(2 * radius)) + 1
    big = Image.fromarray(np.pad((alpha * strength).astype(np.uint8), pad)).filter(ImageFilter.BoxBlur(radius))
    canvas.paste((0, 0, 0), (left - pad, top - pad, left - pad + big.width, top - pad + big.height), big)


def _lut(gain, offset=0.0, bands: int = 3) -> list[int]:
    """A PIL point() table computing v * gain + offset (per band when gain/offset have `bands` entries)."""
    v = np.arange(256, dtype=np.float64)[None, :]
    g = np.broadcast_to(np.asarray(gain, np.float64).reshape(-1, 1), (bands, 1))
    o = np.broadcast_to(np.asarray(offset, np.float64).reshape(-1, 1), (bands, 1))
    return np.clip(v * g + o + 0.5, 0, 255).astype(np.int64).ravel().tolist()


_NOISE_TILE = 512
_noise_tiles: dict[int, tuple[Image.Image, Image.Image]] = {}


def _add_noise(img: Image.Image, rng: np.random.Generator, amplitude: int) -> np.ndarray:
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


def _tight_box(alpha: np.ndarray, left: int, top: int, size: int) -> list[int]:
    """Pixel box [x0, y0, x1, y1) of alpha > 50% placed at (left, top), clipped to the canvas.

    A tiny item whose alpha never reaches 50% (thin shapes at 32 px) uses half its peak instead.
    """
    on = alpha > min(127, int(alpha.max()) // 2)
    xs, ys = np.nonzero(on.any(axis=0))[0] + left, np.nonzero(on.any(axis=1))[0] + top
    xs, ys = xs[(xs >= 0) & (xs < size)], ys[(ys >= 0) & (ys < size)]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _rgb8(c: RGB) -> tuple[int, int, int]:
    return tuple(int(round(255 * x)) for x in c)


def _random_hsv8(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> tuple[int, int, int]:
    return _rgb8(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v)))


# ------------------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class PlacedItem:
    product_id: str
    item: Item
    zone: int
    box: tuple[float, float, float, float]   # target box before rotation, normalised (l, t, r, b)


@dataclass(frozen=True)
class ScenePlan:
    index: int
    scene_id: str
    layout: str                               # "outfit" (mannequin, upper/lower zones) or "flatlay"
    split: str                                # "rows" (upper/lower zones) or "columns" (left/right)
    frame: tuple[float, float, float, float]  # where the look sits in the picture (framing)
    items: tuple[PlacedItem, ...]


@dataclass(frozen=True)
class ProductPlan:
    product_id: str
    item: Item
    key: tuple[int, ...]                      # seeds the catalogue-shot rendering
    scene_index: int | None                   # None for a distractor


def _overlap(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def plan_scene(seed: int, index: int, n_categories: int) -> ScenePlan:
    """Draw one look and lay its 3-5 items out in the two zones of the scene."""
    rng = _rng(seed, _S_PLAN, index)
    look = _sample_look(rng)
    k = int(rng.integers(3, min(5, n_categories) + 1))
    cats = [int(c) for c in rng.choice(n_categories, size=k, replace=False)]
    layout = "outfit" if rng.random() < 0.5 else "flatlay"
    split = "rows" if layout == "outfit" or rng.random() < 0.5 else "columns"
    fw, fh = rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0)
    fx0, fy0 = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
    frame = (fx0, fy0, fx0 + fw, fy0 + fh)
    if split == "rows":
        cats.sort(key=lambda c: SHAPES[CATEGORIES[c][0]].rank)
        mid = fy0 + fh * rng.uniform(0.42, 0.58)
        zones = ((fx0, fy0, fx0 + fw, mid), (fx0, mid, fx0 + fw, fy0 + fh))
    else:
        mid = fx0 + fw * rng.uniform(0.42, 0.58)
        zones = ((fx0, fy0, mid, fy0 + fh), (mid, fy0, fx0 + fw, fy0 + fh))
    n0 = k // 2 if rng.random() < 0.5 else (k + 1) // 2
    placed: list[PlacedItem] = []
    boxes: list[tuple[float, float, float, float]] = []
    for j, cat in enumerate(cats):
        zone = 0 if j < n0 else 1
        item = _make_item(rng, look, zone, cat)
        zx0, zy0, zx1, zy1 = zones[zone]
        area = rng.uniform(0.07, 0.15) * SHAPES[CATEGORIES[cat][0]].area
        w, h = math.sqrt(area * item.aspect), math.sqrt(area / item.aspect)
        box = None
        for attempt in range(200):
            if attempt and attempt % 25 == 0:
                w, h = w * 0.88, h * 0.88
            scale = min(1.0, (zx1 - zx0 + 0.1) / w, (zy1 - zy0 + 0.1) / h, 0.96 / w, 0.96 / h)
            bw, bh = w * scale, h * scale
            mx, my = min(0.05, bw / 2), min(0.05, bh / 2)   # may spill over the zone edge, centre stays in
            lo_x, hi_x = max(zx0 + bw / 2 - mx, bw / 2 + 0.01), min(zx1 - bw / 2 + mx, 0.99 - bw / 2)
            lo_y, hi_y = max(zy0 + bh / 2 - my, bh / 2 + 0.01), min(zy1 - bh / 2 + my, 0.99 - bh / 2)
            cx = rng.uniform(lo_x, max(lo_x, hi_x))
            cy = rng.uniform(lo_y, max(lo_y, hi_y))
            cand = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
            if all(_overlap(cand, o) <= 0.12 for o in boxes) or attempt == 199:
                box = cand
                break
        boxes.append(box)
        placed.append(PlacedItem(_signature(seed, n_categories, "product", index, j), item, zone, box))
    return ScenePlan(index, _signature(seed, n_categories, "scene", index), layout, split, frame, tuple(placed))


def plan_distractor(seed: int, index: int, n_categories: int) -> ProductPlan:
    """A catalogue product in no scene: one item of a fresh look from the same style distribution."""
    rng = _rng(seed, _S_DISTRACTOR, index)
    look = _sample_look(rng)
    item = _make_item(rng, look, int(rng.integers(2)), index % n_categories)
    return ProductPlan(_signature(seed, n_categories, "distractor", index), item, (1, index), None)


# -------------------------------------------------------------------------------------- rendering
def _scene_background(rng: np.random.Generator, plan: ScenePlan, out_size: int) -> Image.Image:
    """Wall, floor, clutter and (outfit layouts) a mannequin, drawn small and upscaled: out of focus."""
    size = max(16, round(out_size * rng.uniform(0.45, 0.75)))
    img = Image.new("RGB", (size, size), _random_hsv8(rng, (0.03, 0.35), (0.45, 0.95)))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.6:  # a floor
        d.rectangle([0, rng.uniform(0.55, 0.85) * size, size, size], fill=_random_hsv8(rng, (0.0, 0.3), (0.25, 0.8)))
    for _ in range(int(rng.integers(5, 12))):  # clutter in colours unrelated to the look
        colour = _random_hsv8(rng, (0.0, 0.6), (0.15, 0.95))
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        bw, bh = rng.uniform(0.05, 0.45, 2) * size
        kind = int(rng.integers(4))
        if kind == 0:
            d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=colour)
        elif kind == 1:
            d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=colour)
        elif kind == 2:
            width = max(1, int(rng.uniform(0.005, 0.03) * size))
            d.line([x0, y0, x0 + bw, y0 + bh * rng.choice([-1, 1])], fill=colour, width=width)
        else:
            pts = [(x0 + bw * rng.random(), y0 + bh * rng.random()) for _ in range(int(rng.integers(3, 6)))]
            d.polygon(pts, fill=colour)
    if plan.layout == "outfit":  # a faint mannequin behind the items
        fx0, fy0, fx1, fy1 = (v * size for v in plan.frame)
        fw, fh, cx = fx1 - fx0, fy1 - fy0, (fx0 + fx1) / 2
        skin = _rgb8(colorsys.hsv_to_rgb(rng.uniform(0.03, 0.1), rng.uniform(0.1, 0.4), rng.uniform(0.4, 0.9)))
        d.ellipse([cx - 0.07 * fw, fy0, cx + 0.07 * fw, fy0 + 0.13 * fh], fill=skin)
        d.rectangle([cx - 0.03 * fw, fy0 + 0.12 * fh, cx + 0.03 * fw, fy0 + 0.18 * fh], fill=skin)
        d.polygon([(cx - 0.18 * fw, fy0 + 0.18 * fh), (cx + 0.18 * fw, fy0 + 0.18 * fh),
                   (cx + 0.14 * fw, fy0 + 0.55 * fh), (cx - 0.14 * fw, fy0 + 0.55 * fh)], fill=skin)
        for sgn in (-1, 1):
            d.line([(cx + sgn * 0.17 * fw, fy0 + 0.2 * fh), (cx + sgn * 0.26 * fw, fy0 + 0.52 * fh)],
                   fill=skin, width=max(1, int(0.05 * fw)))
            d.line([(cx + sgn * 0.07 * fw, fy0 + 0.54 * fh), (cx + sgn * 0.09 * fw, fy1)],
                   fill=skin, width=max(1, int(0.08 * fw)))
    return img.filter(ImageFilter.BoxBlur(1.0)).resize((out_size, out_size), Image.BICUBIC)


def render_scene(plan: ScenePlan, *, seed: int, size: int, return_masks: bool = False):
    """Render a scene: (uint8 image (size, size, 3), tight bboxes [l, t, r, b] normalised, item masks or None).

    A mask is the item's full alpha on the scene canvas (before later items occlude it), uint8.
    """
    # three streams: background, items, lighting + noise (so a scene without its items keeps the rest)
    canvas = _scene_background(_rng(seed, _S_SCENE, plan.index, 0), plan, size)
    rng = _rng(seed, _S_SCENE, plan.index, 1)
    bboxes, masks = [], []
    for placed in plan.items:
        l, t, r, b = placed.box
        img = _item_image(placed.item, round((r - l) * size), round((b - t) * size), rng, rng.normal(0, 4))
        left, top = round((l + r) / 2 * size - img.width / 2), round((t + b) / 2 * size - img.height / 2)
        alpha = img.getchannel("A")
        a = np.asarray(alpha)
        _shadow(canvas, a, left + round(0.01 * size), top + round(0.015 * size), 0.012 * size + 0.5, 0.35)
        canvas.paste(img, (left, top), img)
        x0, y0, x1, y1 = _tight_box(a, left, top, size)
        bboxes.append([x0 / size, y0 / size, x1 / size, y1 / size])
        if return_masks:
            full = Image.new("L", (size, size), 0)
            full.paste(alpha, (left, top))
            masks.append(np.asarray(full))
    # lighting: a gradient across the picture, contrast, brightness, colour cast; then sensor noise
    rng = _rng(seed, _S_SCENE, plan.index, 2)
    ang, depth = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.35)
    xs = np.arange(size, dtype=np.float32) / size - 0.5
    ramp = (math.cos(ang) * xs[None, :] + math.sin(ang) * xs[:, None]) * (depth / 1.42) + (1 - depth / 2)
    canvas = ImageChops.multiply(canvas, Image.fromarray((ramp * 255 + 0.5).astype(np.uint8)).convert("RGB"))
    contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.12) / (1 - depth / 4)
    cast = (1 + rng.normal(0, 0.03, 3)) * brightness
    canvas = canvas.point(_lut(contrast * cast, (1 - contrast) * 127.5 * cast))
    img = _add_noise(canvas, rng, int(rng.integers(2, 6)))
    return img, bboxes, (masks if return_masks else None)


def render_product(plan: ProductPlan, *, seed: int, size: int) -> np.ndarray:
    """Render a catalogue shot of the item: light plain background, centred, its own pose and scale."""
    rng = _rng(seed, _S_PRODUCT, *plan.key)
    item = plan.item
    tint = np.asarray(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.06), rng.uniform(0.9, 0.99)), np.float32)
    column = (tint * (1.0 - 0.05 * np.arange(size, dtype=np.float32) / size)[:, None] * 255 + 0.5).astype(np.uint8)
    canvas = Image.fromarray(column[:, None, :], "RGB").resize((size, size), Image.NEAREST)
    long_side = rng.uniform(0.58, 0.8) * size
    w, h = (long_side, long_side / item.aspect) if item.aspect >= 1 else (long_side * item.aspect, long_side)
    img = _item_image(item, round(w), round(h), rng, rng.uniform(-12, 12), flip=bool(rng.random() < 0.5))
    left = round(size / 2 - img.width / 2 + rng.normal(0, 0.02) * size)
    top = round(size / 2 - img.height / 2 + rng.normal(0, 0.02) * size)
    _shadow(canvas, np.asarray(img.getchannel("A")), left, top + round(0.025 * size), 0.02 * size + 0.5, 0.18)
    canvas.paste(img, (left, top), img)
    canvas = canvas.point(_lut(rng.uniform(0.97, 1.04)))
    return _add_noise(canvas, rng, 2)


def _save_jpeg(img: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="JPEG", quality=90)


def _run_task(task) -> tuple[str, int, list | None]:
    """Worker body: render one image, write it atomically, return the scene's bboxes (or None)."""
    kind, plan, seed, size, path = task
    if kind == "scene":
        img, bboxes, _ = render_scene(plan, seed=seed, size=size)
        _save_jpeg(img, path)
        return kind, plan.index, bboxes
    _save_jpeg(render_product(plan, seed=seed, size=size), path)
    return kind, -1, None


# --------------------------------------------------------------------------------------- the job
def _params(seed: int, scenes: int, products: int, categories: int, image_size: int) -> dict:
    return {"seed": seed, "scenes": scenes, "products": products, "categories": categories,
            "image_size": image_size, "version": GENERATOR_VERSION}


def _is_done(out: Path, params: dict) -> dict | None:
    try:
        marker = json.loads((out / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("params") != params:
        return None
    if not all((out / name).exists() for name in (PAIRS_FILE, CATEGORIES_FILE, CATALOG_FILE)):
        return None
    return marker


def generate(out: str | os.PathLike = SAMPLE_DIR, *, seed: int = 0, scenes: int = 300, products: int = 2500,
             categories: int = 8, image_size: int = 256, workers: int | None = None, progress: bool = True) -> dict:
    """Write the sample dataset into `out` (a no-op when it already holds one with the same params)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    if not 3 <= categories <= len(CATEGORIES):
        raise ValueError(f"categories must be in [3, {len(CATEGORIES)}], got {categories}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    out = Path(out)
    params = _params(seed, scenes, products, categories, image_size)
    marker = _is_done(out, params)
    if marker is not None:
        return {"skipped": True, **marker}
    started = time.perf_counter()
    for name in (DONE_FILE, CATALOG_FILE, PAIRS_FILE, CATEGORIES_FILE):   # never leave old manifests over new images
        (out / name).unlink(missing_ok=True)

    plans = [plan_scene(seed, i, categories) for i in range(scenes)]
    in_scenes = [ProductPlan(p.product_id, p.item, (0, s.index, j), s.index)
                 for s in plans for j, p in enumerate(s.items)]
    if products < len(in_scenes):
        raise ValueError(f"products ({products}) is smaller than the {len(in_scenes)} products that appear in "
                         f"{scenes} scenes; raise products or lower scenes")
    catalogue = in_scenes + [plan_distractor(seed, j, categories) for j in range(products - len(in_scenes))]

    (out / SCENE_DIR).mkdir(parents=True, exist_ok=True)
    (out / PRODUCT_DIR).mkdir(parents=True, exist_ok=True)
    tasks = [("scene", s, seed, image_size, out / SCENE_DIR / f"{s.scene_id}.jpg") for s in plans]
    tasks += [("product", p, seed, image_size, out / PRODUCT_DIR / f"{p.product_id}.jpg") for p in catalogue]
    workers = max(1, workers or os.cpu_count() or 1)
    bboxes: dict[int, list] = {}
    from tqdm import tqdm
    with tqdm(total=len(tasks), desc="sample-data", unit="img", disable=not progress) as bar:
        if workers == 1:
            results = map(_run_task, tasks)
            for kind, index, boxes in results:
                if kind == "scene":
                    bboxes[index] = boxes
                bar.update()
        else:
            # forkserver, not fork: a caller may hold threads (torch); results do not depend on it
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else None)
            with ctx.Pool(workers) as pool:
                for kind, index, boxes in pool.imap_unordered(_run_task, tasks, chunksize=16):
                    if kind == "scene":
                        bboxes[index] = boxes
                    bar.update()

    # manifests last: a crash before this point leaves no complete-looking dataset
    lines = []
    for s in plans:
        for placed, box in zip(s.items, bboxes[s.index]):
            lines.append(json.dumps({"product": placed.product_id, "scene": s.scene_id,
                                     "bbox": [round(float(v), 5) for v in box]}))
    write_text_atomic(out / PAIRS_FILE, "\n".join(lines) + "\n")
    write_json_atomic(out / CATEGORIES_FILE, {p.product_id: CATEGORIES[p.item.category][1] for p in catalogue})
    _write_catalog(out / CATALOG_FILE, catalogue)
    _remove_stale(out, {s.scene_id for s in plans}, {p.product_id for p in catalogue})
    marker = {"params": params,
              "counts": {"scenes": scenes, "products": products, "products_in_scenes": len(in_scenes),
                         "pairs": len(lines)},
              "seconds": round(time.perf_counter() - started, 2)}
    write_json_atomic(out / DONE_FILE, marker)
    return {"skipped": False, **marker}


def _write_catalog(path: Path, catalogue: list[ProductPlan]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(catalogue, key=lambda p: p.product_id)
    table = pa.table({
        "product_id": pa.array([p.product_id for p in rows], pa.string()),
        "image_path": pa.array([(PRODUCT_DIR / f"{p.product_id}.jpg").as_posix() for p in rows], pa.string()),
        "category": pa.array([CATEGORIES[p.item.category][1] for p in rows], pa.string()),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _remove_stale(out: Path, scene_ids: set[str], product_ids: set[str]) -> None:
    """Delete images of an earlier run with other params, and temp files of a crashed one (ours only)."""
    for folder, keep in ((out / SCENE_DIR, scene_ids), (out / PRODUCT_DIR, product_ids)):
        for f in folder.iterdir():
            if f.suffix == ".jpg" and f.stem not in keep and len(f.stem) == 32:
                f.unlink()
            elif f.name.startswith(".") and f.name.endswith(".tmp"):
                f.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- contact sheet
_BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def render_contact_sheet(sample_dir: str | os.PathLike, out_png: str | os.PathLike, n: int = 4,
                         *, scene_px: int = 256, thumb: int = 112, per_row: int = 3) -> Path:
    """Draw n scenes with their boxes, each next to its products' catalogue shots, into a PNG."""
    sample_dir = Path(sample_dir)
    cats = json.loads((sample_dir / CATEGORIES_FILE).read_text())
    by_scene: dict[str, list[dict]] = {}
    for line in (sample_dir / PAIRS_FILE).read_text().splitlines():
        if line.strip():
            pair = json.loads(line)
            by_scene.setdefault(pair["scene"], []).append(pair)
    chosen = list(by_scene)[:n]
    if not chosen:
        raise ValueError(f"no pairs in {sample_dir / PAIRS_FILE}")
    pad, label_h, header = 8, 13, 22
    cell_w, cell_h = thumb + pad, thumb + label_h + pad
    grid_rows = max(math.ceil(len(by_scene[s]) / per_row) for s in chosen)
    width = scene_px + 4 * pad + per_row * cell_w
    row_h = max(scene_px, grid_rows * cell_h) + 2 * pad
    sheet = Image.new("RGB", (width, header + len(chosen) * row_h), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((pad, 6), "scene + pairs.jsonl boxes", fill=(40, 40, 40), font=font)
    draw.text((scene_px + 3 * pad, 6), "its products (catalogue shots)", fill=(40, 40, 40), font=font)
    short = {path: name for name, path in CATEGORIES}
    for r, sid in enumerate(chosen):
        y = header + r * row_h
        scene = Image.open(sample_dir / SCENE_DIR / f"{sid}.jpg").convert("RGB").resize((scene_px, scene_px))
        sd = ImageDraw.Draw(scene)
        for k, pair in enumerate(by_scene[sid]):
            colour = _BOX_COLOURS[k % len(_BOX_COLOURS)]
            l, t, rr, b = (v * scene_px for v in pair["bbox"])
            sd.rectangle([l, t, rr - 1, b - 1], outline=colour, width=2)
            sd.text((l + 3, t + 1), str(k + 1), fill=colour, font=font)
        sheet.paste(scene, (pad, y))
        for k, pair in enumerate(by_scene[sid]):
            colour = _BOX_COLOURS[k % len(_BOX_COLOURS)]
            x = pad + scene_px + 3 * pad + (k % per_row) * cell_w
            ty = y + 2 + (k // per_row) * cell_h
            prod = Image.open(sample_dir / PRODUCT_DIR / f"{pair['product']}.jpg").convert("RGB").resize((thumb, thumb))
            sheet.paste(prod, (x, ty))
            draw.rectangle([x - 2, ty - 2, x + thumb + 1, ty + thumb + 1], outline=colour, width=2)
            name = short.get(cats.get(pair["product"], ""), "?")
            draw.text((x, ty + thumb + 2), f"{k + 1} {name}", fill=(40, 40, 40), font=font)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:   # 256 colours keep the PNG small; the looks survive it
        sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            tmp, format="PNG", optimize=True)
    return out_png


# ------------------------------------------------------------------------------------------- CLI
@click.command("sample-data")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=SAMPLE_DIR, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--scenes", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--products", type=click.IntRange(min=1), default=2500, show_default=True,
              help="catalogue size, products in scenes included")
@click.option("--categories", type=click.IntRange(3, len(CATEGORIES)), default=8, show_default=True)
@click.option("--image-size", type=click.IntRange(min=32), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="processes [default: os.cpu_count()]")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also draw a contact sheet PNG of a few scenes and their products")
@click.option("--sheet-scenes", type=click.IntRange(min=1), default=4, show_default=True)
def sample_data_command(out, seed, scenes, products, categories, image_size, workers, sheet, sheet_scenes) -> None:
    """Generate the embedded sample of looks: scene and product images, pairs, categories and catalogue.

    Writes pairs.jsonl, categories.json and catalog.parquet (STL formats); a no-op if OUT already holds
    the same sample.
    """
    try:
        result = generate(out, seed=seed, scenes=scenes, products=products, categories=categories,
                          image_size=image_size, workers=workers)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    counts = result["counts"]
    if result["skipped"]:
        click.echo(f"{out}: up to date ({counts['scenes']} scenes, {counts['products']} products); nothing to do")
    else:
        click.echo(f"{out}: wrote {counts['scenes']} scenes, {counts['products']} products "
                   f"({counts['products_in_scenes']} in scenes) in {result['seconds']:.1f} s")
    if sheet is not None:
        click.echo(f"contact sheet: {render_contact_sheet(out, sheet, n=sheet_scenes)}")
