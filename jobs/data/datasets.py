"""The one dataset loader training reads: either layout of jobs.data.layouts, with local image paths.

The layout is detected from the files present. Scenes and products without a local image are left
out, with the pairs that use them (counted in ``Dataset.skipped``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pyarrow.parquet as pq

from common.errors import ArtifactError
from jobs.data.image_map import read_image_map, resolve_images
from jobs.data.layouts import (
    PAIRS,
    PRODUCTS,
    SAMPLE_CATEGORIES,
    SAMPLE_PAIRS,
    SCENES,
    sample_product_image,
    sample_scene_image,
)
from jobs.data.pair_files import parse_pairs, read_categories

log = logging.getLogger(__name__)


class DatasetError(ArtifactError):
    """A dataset dir that holds neither layout, or no local image yet."""


class Product(NamedTuple):
    image_path: Path
    category: str


class Pair(NamedTuple):
    scene_id: str
    product_id: str
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class Dataset:
    """Scenes, products and scene-product pairs with local image paths."""

    root: Path
    layout: str                                  # "stl" or "sample"
    scenes: dict[str, Path]                      # scene_id -> image path
    products: dict[str, Product]                 # product_id -> (image_path, category)
    pairs: list[Pair]                            # (scene_id, product_id, (l, t, r, b))
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count left out on load

    def categories(self) -> list[str]:
        return sorted({p.category for p in self.products.values()})


def load_dataset(root: str | os.PathLike, *, check_files: bool = True) -> Dataset:
    """Load a dataset dir in either layout (see jobs.data.layouts) with local image paths.

    Raises DatasetError with a readable message when the dir holds neither layout or when no STL
    image has been fetched yet. What was left out (bad pair lines, missing images) is counted in
    ``Dataset.skipped`` and logged; ``pairs`` may be empty when nothing usable is left.
    """
    root = Path(root)
    if (root / PAIRS).exists():
        ds = _load_stl(root, check_files)
    elif (root / SAMPLE_PAIRS).exists() and (root / SAMPLE_CATEGORIES).exists():
        ds = _load_sample(root, check_files)
    else:
        raise DatasetError(
            f"{root} is not a dataset dir: expected {PAIRS} (from `ctl data stl`) or "
            f"{SAMPLE_PAIRS} + {SAMPLE_CATEGORIES} (from `ctl sample-data`)")
    if ds.skipped:
        log.warning("%s: left out %s", root, ", ".join(f"{n} {k}" for k, n in ds.skipped.items()))
    return ds


def _count(skipped: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        skipped[reason] = skipped.get(reason, 0) + n


def _load_sample(root: Path, check_files: bool) -> Dataset:
    categories = read_categories(root / SAMPLE_CATEGORIES)
    records, rejects = parse_pairs(root / SAMPLE_PAIRS, categories)
    skipped: dict[str, int] = {}
    for r in rejects:
        _count(skipped, f"pair lines {r.reason}")
    exists = (lambda p: p.is_file()) if check_files else (lambda p: True)
    products = {}
    for pid, cat in categories.items():
        path = root / sample_product_image(pid)
        if exists(path):
            products[pid] = Product(path, cat)
        else:
            _count(skipped, "products without image")
    scenes: dict[str, Path] = {}
    missing_scenes: set[str] = set()
    pairs = []
    for r in records:
        if r.scene_id not in scenes and r.scene_id not in missing_scenes:
            path = root / sample_scene_image(r.scene_id)
            if exists(path):
                scenes[r.scene_id] = path
            else:
                missing_scenes.add(r.scene_id)
        if r.scene_id in scenes and r.product_id in products:
            pairs.append(Pair(r.scene_id, r.product_id, r.bbox))
        else:
            _count(skipped, "pairs without image")
    _count(skipped, "scenes without image", len(missing_scenes))
    return Dataset(root, "sample", scenes, products, pairs, skipped)


def _load_stl(root: Path, check_files: bool) -> Dataset:
    for name in (SCENES, PRODUCTS):
        if not (root / name).exists():
            raise DatasetError(f"{root}: {PAIRS} is there but {name} is missing; rerun `ctl data stl`")
    images = read_image_map(root)
    scenes_t = pq.read_table(root / SCENES)
    products_t = pq.read_table(root / PRODUCTS)
    pairs_t = pq.read_table(root / PAIRS, columns=["scene_id", "product_id", "left", "top", "right", "bottom"])
    exists = (lambda p: p.is_file()) if check_files else (lambda p: True)
    skipped: dict[str, int] = {}

    scenes: dict[str, Path] = {}
    for sid, p in zip(scenes_t.column("scene_id").to_pylist(), resolve_images(scenes_t, images), strict=False):
        path = root / p if p else None
        if path is not None and exists(path):
            scenes[sid] = path
        else:
            _count(skipped, "scenes without local image")
    products: dict[str, Product] = {}
    for pid, cat, p in zip(products_t.column("product_id").to_pylist(), products_t.column("category").to_pylist(),
                           resolve_images(products_t, images), strict=False):
        path = root / p if p else None
        if path is not None and exists(path):
            products[pid] = Product(path, cat)
        else:
            _count(skipped, "products without local image")
    if not scenes and not products and not images:
        raise DatasetError(f"{root}: no local images yet; run `ctl data fetch {root}` first")

    cols = [pairs_t.column(c).to_pylist() for c in pairs_t.column_names]
    pairs = []
    for sid, pid, left, top, right, bottom in zip(*cols, strict=False):
        if sid in scenes and pid in products:
            pairs.append(Pair(sid, pid, (left, top, right, bottom)))
        else:
            _count(skipped, "pairs without local image")
    return Dataset(root, "stl", scenes, products, pairs, skipped)
