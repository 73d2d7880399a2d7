"""Category silhouettes: the categories of the sample and how each one's shape is drawn."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


# Each drawer gets ImageDraw objects for the body (pattern-filled) and the detail parts, a function
# mapping unit-box coordinates to pixels, the item's shape parameters p (4 floats in [0, 1]) and
# the pixel size. Not every shape reaches all four sides of its box (a shoe's top, a necklace's
# sides), so a scene's pair box is measured on the rendered pixels (render._tight_box), not taken
# from the box it was drawn in.
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
    poly = ([pt(x, y) for x, y in zip(left, ys, strict=True)]
            + [pt(x + 0.7, y) for x, y in zip(left[::-1], ys[::-1], strict=True)])
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
