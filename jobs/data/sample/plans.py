"""Planning: each scene's look and the layout of its items in two zones, and the distractor products.

Every random draw comes from a generator seeded by (seed, stream, index...), never from global state.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from jobs.data.sample.shapes import CATEGORIES, SHAPES
from jobs.data.sample.styles import Item, OutfitCue, apply_cue, make_item, sample_cue, sample_look

# Random streams: each is seeded with (seed, stream, index...).
PLAN_STREAM, SCENE_STREAM, PRODUCT_STREAM, DISTRACTOR_STREAM, CUE_STREAM = 1, 2, 3, 4, 5
# "zones": local cues only (an item takes its zone's style); "outfit": a whole-look occasion besides (styles.py).
LOOK_KINDS = ("zones", "outfit")


def stream_rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *index])


def signature(*parts) -> str:
    """A 32-hex-character id (like STL's signatures), fixed by its parts."""
    return hashlib.md5("/".join(["ctl-sample", *map(str, parts)]).encode()).hexdigest()


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
    cue: OutfitCue | None = None              # "outfit" looks only


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


def _look_and_cue(rng: np.random.Generator, seed: int, stream: int, index: int, looks: str):
    """A look from `rng`; for "outfit" looks, its cue from a stream of its own (the other draws stay as in "zones")."""
    look = sample_look(rng)
    if looks == "zones":
        return look, None
    if looks != "outfit":
        raise ValueError(f"looks must be one of {LOOK_KINDS}, got {looks!r}")
    cue = sample_cue(stream_rng(seed, CUE_STREAM, stream, index))
    return apply_cue(look, cue), cue


def _id_parts(looks: str) -> tuple[str, ...]:
    """Extra signature parts: none for "zones" (its ids are the original generator's), the kind otherwise."""
    return () if looks == "zones" else (looks,)


def plan_scene(seed: int, index: int, n_categories: int, looks: str = "zones") -> ScenePlan:
    """Draw one look and lay its 3-5 items out in the two zones of the scene."""
    rng = stream_rng(seed, PLAN_STREAM, index)
    look, cue = _look_and_cue(rng, seed, PLAN_STREAM, index, looks)
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
        item = make_item(rng, look, zone, cat)
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
        product_id = signature(seed, n_categories, *_id_parts(looks), "product", index, j)
        placed.append(PlacedItem(product_id, item, zone, box))
    scene_id = signature(seed, n_categories, *_id_parts(looks), "scene", index)
    return ScenePlan(index, scene_id, layout, split, frame, tuple(placed), cue)


def plan_distractor(seed: int, index: int, n_categories: int, looks: str = "zones") -> ProductPlan:
    """A catalogue product in no scene: one item of a fresh look from the same style distribution."""
    rng = stream_rng(seed, DISTRACTOR_STREAM, index)
    look, _ = _look_and_cue(rng, seed, DISTRACTOR_STREAM, index, looks)
    item = make_item(rng, look, int(rng.integers(2)), index % n_categories)
    return ProductPlan(signature(seed, n_categories, *_id_parts(looks), "distractor", index), item, (1, index), None)
