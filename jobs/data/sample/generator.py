"""Writing the sample: render every image (in worker processes), then the manifests; and `ctl sample-data`."""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
from PIL import Image

from common.defaults import SAMPLE_DIR, SEED
from common.errors import InputError
from common.files import atomic_path, write_json_atomic, write_text_atomic
from common.progress import progress_bar
from jobs.data.catalog_manifest import write_catalog_table
from jobs.data.layouts import (
    CATALOG,
    DONE_FILE,
    PRODUCT_DIR,
    SAMPLE_CATEGORIES,
    SAMPLE_IMAGE_SUFFIX,
    SAMPLE_PAIRS,
    SCENE_DIR,
    sample_product_image,
    sample_scene_image,
)
from jobs.data.sample.contact_sheet import render_contact_sheet
from jobs.data.sample.plans import LOOK_KINDS, ProductPlan, plan_distractor, plan_scene
from jobs.data.sample.render import render_product, render_scene
from jobs.data.sample.shapes import CATEGORIES

GENERATOR_VERSION = 2


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


def _params(seed: int, scenes: int, products: int, categories: int, image_size: int, looks: str) -> dict:
    params = {"seed": seed, "scenes": scenes, "products": products, "categories": categories,
              "image_size": image_size, "version": GENERATOR_VERSION}
    if looks != "zones":   # a "zones" marker stays the original generator's, byte for byte
        params["looks"] = looks
    return params


def _is_done(out: Path, params: dict) -> dict | None:
    try:
        marker = json.loads((out / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("params") != params:
        return None
    if not all((out / name).exists() for name in (SAMPLE_PAIRS, SAMPLE_CATEGORIES, CATALOG)):
        return None
    return marker


def generate(out: str | os.PathLike = SAMPLE_DIR, *, seed: int = SEED, scenes: int = 300, products: int = 2500,
             categories: int = 8, image_size: int = 256, workers: int | None = None, progress: bool = True,
             distractors: int | None = None, looks: str = "zones") -> dict:
    """Write the sample dataset into `out` (a no-op when it already holds one with the same params).

    `distractors`, when given, sets the catalogue to the products of the scenes plus that many products
    in no scene (instead of `products` in all). The scenes, pairs and first distractors do not depend on
    the catalogue size, so a larger catalogue holds the smaller one's products.
    `looks` picks the look kind (plans.LOOK_KINDS): "zones" (local cues only, the original generator's
    output) or "outfit" (a whole-look occasion and theme colour besides).
    InputError for a parameter out of range. Returns the _done.json marker with "skipped" added.
    """
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if scenes < 1:
        raise InputError(f"scenes must be >= 1, got {scenes}")
    if not 3 <= categories <= len(CATEGORIES):
        raise InputError(f"categories must be in [3, {len(CATEGORIES)}], got {categories}")
    if looks not in LOOK_KINDS:
        raise InputError(f"looks must be one of {', '.join(LOOK_KINDS)}, got {looks!r}")
    if image_size < 32:
        raise InputError(f"image_size must be >= 32, got {image_size}")
    if distractors is not None:
        if distractors < 0:
            raise InputError(f"distractors must be >= 0, got {distractors}")
        products = sum(len(plan_scene(seed, i, categories, looks).items) for i in range(scenes)) + distractors
    out = Path(out)
    params = _params(seed, scenes, products, categories, image_size, looks)
    marker = _is_done(out, params)
    if marker is not None:
        return {"skipped": True, **marker}
    started = time.perf_counter()
    for name in (DONE_FILE, CATALOG, SAMPLE_PAIRS, SAMPLE_CATEGORIES):   # never leave old manifests over new images
        (out / name).unlink(missing_ok=True)

    plans = [plan_scene(seed, i, categories, looks) for i in range(scenes)]
    in_scenes = [ProductPlan(p.product_id, p.item, (0, s.index, j), s.index)
                 for s in plans for j, p in enumerate(s.items)]
    if products < len(in_scenes):
        raise InputError(f"products ({products}) is smaller than the {len(in_scenes)} products that appear in "
                         f"{scenes} scenes; raise products or lower scenes")
    catalogue = in_scenes + [plan_distractor(seed, j, categories, looks) for j in range(products - len(in_scenes))]

    (out / SCENE_DIR).mkdir(parents=True, exist_ok=True)
    (out / PRODUCT_DIR).mkdir(parents=True, exist_ok=True)
    tasks = [("scene", s, seed, image_size, out / sample_scene_image(s.scene_id)) for s in plans]
    tasks += [("product", p, seed, image_size, out / sample_product_image(p.product_id)) for p in catalogue]
    workers = max(1, workers or os.cpu_count() or 1)
    bboxes: dict[int, list] = {}
    with progress_bar(total=len(tasks), desc="sample-data", unit="img", disable=not progress) as bar:
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
        for placed, box in zip(s.items, bboxes[s.index], strict=False):
            lines.append(json.dumps({"product": placed.product_id, "scene": s.scene_id,
                                     "bbox": [round(float(v), 5) for v in box]}))
    write_text_atomic(out / SAMPLE_PAIRS, "\n".join(lines) + "\n")
    write_json_atomic(out / SAMPLE_CATEGORIES, {p.product_id: CATEGORIES[p.item.category][1] for p in catalogue})
    _write_catalog(out / CATALOG, catalogue)
    _remove_stale(out, {s.scene_id for s in plans}, {p.product_id for p in catalogue})
    marker = {"params": params,
              "counts": {"scenes": scenes, "products": products, "products_in_scenes": len(in_scenes),
                         "pairs": len(lines)},
              "seconds": round(time.perf_counter() - started, 2)}
    write_json_atomic(out / DONE_FILE, marker)
    return {"skipped": False, **marker}


def _write_catalog(path: Path, catalogue: list[ProductPlan]) -> None:
    rows = sorted(catalogue, key=lambda p: p.product_id)
    table = pa.table({
        "product_id": pa.array([p.product_id for p in rows], pa.string()),
        "image_path": pa.array([sample_product_image(p.product_id).as_posix() for p in rows], pa.string()),
        "category": pa.array([CATEGORIES[p.item.category][1] for p in rows], pa.string()),
    })
    write_catalog_table(path, table)


def _remove_stale(out: Path, scene_ids: set[str], product_ids: set[str]) -> None:
    """Delete images of an earlier run with other params, and temp files of a crashed one (ours only)."""
    for folder, keep in ((out / SCENE_DIR, scene_ids), (out / PRODUCT_DIR, product_ids)):
        for f in folder.iterdir():
            if f.suffix == SAMPLE_IMAGE_SUFFIX and f.stem not in keep and len(f.stem) == 32:
                f.unlink()
            elif f.name.startswith(".") and f.name.endswith(".tmp"):
                f.unlink(missing_ok=True)


@click.command("sample-data")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=SAMPLE_DIR, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=SEED, show_default=True)
@click.option("--scenes", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--products", type=click.IntRange(min=1), default=2500, show_default=True,
              help="catalogue size, products in scenes included")
@click.option("--distractors", type=click.IntRange(min=0), default=None,
              help="instead of --products: the products of the scenes plus this many in no scene (a larger "
                   "catalogue around the same looks)")
@click.option("--categories", type=click.IntRange(3, len(CATEGORIES)), default=8, show_default=True)
@click.option("--image-size", type=click.IntRange(min=32), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="processes [default: os.cpu_count()]")
@click.option("--looks", type=click.Choice(LOOK_KINDS), default="zones", show_default=True,
              help="zones: an item matches its zone of the scene (local cues); outfit: a whole-look occasion "
                   "and theme colour shape every item and the scene too (global cues besides)")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also draw a contact sheet PNG of a few scenes and their products")
@click.option("--sheet-scenes", type=click.IntRange(min=1), default=4, show_default=True)
@click.pass_context
def sample_data_command(ctx, out, seed, scenes, products, distractors, categories, image_size, workers, looks,
                        sheet, sheet_scenes) -> None:
    """Generate the embedded sample of looks: scene and product images, pairs, categories and catalogue.

    Writes pairs.jsonl, categories.json and catalog.parquet (STL formats); a no-op if OUT already holds
    the same sample.
    """
    if distractors is not None and ctx.get_parameter_source("products") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--products and --distractors both size the catalogue; give one")
    result = generate(out, seed=seed, scenes=scenes, products=products, categories=categories,
                      image_size=image_size, workers=workers, distractors=distractors, looks=looks)
    counts = result["counts"]
    if result["skipped"]:
        click.echo(f"{out}: up to date ({counts['scenes']} scenes, {counts['products']} products); nothing to do")
    else:
        click.echo(f"{out}: wrote {counts['scenes']} scenes, {counts['products']} products "
                   f"({counts['products_in_scenes']} in scenes) in {result['seconds']:.1f} s")
    if sheet is not None:
        click.echo(f"contact sheet: {render_contact_sheet(out, sheet, n=sheet_scenes)}")
