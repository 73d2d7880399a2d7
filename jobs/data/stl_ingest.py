"""`ctl data stl`: Shop-the-Look pair and category files -> the parquet manifests of a dataset dir."""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import pyarrow as pa

from common.files import sha256_of, write_json_atomic, write_text_atomic
from common.parquet import write_parquet_atomic
from jobs.data.catalog_manifest import write_catalog
from jobs.data.layouts import CATALOG, PAIRS, PRODUCTS, REJECTS, SCENES, SUMMARY
from jobs.data.pair_files import PairFileError, Reject, no_gc, parse_pairs, read_categories

# STL signatures are lowercase hex (md5); the URL template slices the first six characters.
STL_SIGNATURE_RE = re.compile(r"[0-9a-f]{6,}")
STL_URL_TEMPLATE = "http://i.pinimg.com/400x/{s[0]}{s[1]}/{s[2]}{s[3]}/{s[4]}{s[5]}/{s}.jpg"
SHOWN_REJECTS = 10


def stl_image_url(signature: str) -> str:
    """The CDN URL of an STL image signature (`http://i.pinimg.com/400x/ab/cd/ef/abcdef....jpg`)."""
    return STL_URL_TEMPLATE.format(s=signature)


@dataclass
class IngestResult:
    out: Path
    items: int                     # non-empty lines (or array elements) read
    pairs: int
    scenes: int
    products: int                  # categorised products (the catalogue)
    rejects: list[Reject]
    per_category: dict[str, dict[str, int]]
    seconds: float

    @property
    def reject_counts(self) -> dict[str, int]:
        return dict(Counter(r.reason for r in self.rejects))


def ingest_stl(pairs_path: str | os.PathLike, categories_path: str | os.PathLike,
               out: str | os.PathLike, *, url_template: str = STL_URL_TEMPLATE) -> IngestResult:
    """Validate an STL pair file against its category file and write DIR's manifests.

    Writes scenes/products/pairs/catalog parquet, rejects.jsonl (one rejected line each, with its
    line number and reason) and, last, summary.json. Every file is written atomically. Raises
    PairFileError when an input cannot be read or no valid pair is left.
    """
    with no_gc():
        return _ingest(Path(pairs_path), Path(categories_path), Path(out), url_template)


def _ingest(pairs_path: Path, categories_path: Path, out: Path, url_template: str) -> IngestResult:
    t0 = time.perf_counter()
    raw_categories = read_categories(categories_path)
    categories = {k: v for k, v in raw_categories.items() if STL_SIGNATURE_RE.fullmatch(k)}
    bad_keys = len(raw_categories) - len(categories)
    records, rejects = parse_pairs(pairs_path, categories, id_re=STL_SIGNATURE_RE)
    if not records:
        first = f"; first problem: line {rejects[0].line}: {rejects[0].detail}" if rejects else ""
        raise PairFileError(f"{pairs_path}: no valid pair ({len(rejects)} line(s) rejected){first}")

    url = url_template.format
    lines, pair_scenes, pair_products, pair_categories, boxes = zip(*records, strict=False)
    scene_products: dict[str, int] = Counter(pair_scenes)
    product_scenes: dict[str, int] = Counter(pair_products)
    scene_ids = sorted(scene_products)
    product_ids = sorted(categories)

    scenes = pa.table({
        "scene_id": pa.array(scene_ids, pa.string()),
        "image_url": pa.array([url(s=s) for s in scene_ids], pa.string()),
        "image_path": pa.nulls(len(scene_ids), pa.string()),
        "n_products": pa.array([scene_products[s] for s in scene_ids], pa.int32()),
    })
    products = pa.table({
        "product_id": pa.array(product_ids, pa.string()),
        "category": pa.array([categories[p] for p in product_ids], pa.string()),
        "image_url": pa.array([url(s=p) for p in product_ids], pa.string()),
        "image_path": pa.nulls(len(product_ids), pa.string()),
        "n_scenes": pa.array([product_scenes.get(p, 0) for p in product_ids], pa.int32()),
    })
    pairs = pa.table({
        "scene_id": pa.array(pair_scenes, pa.string()),
        "product_id": pa.array(pair_products, pa.string()),
        "category": pa.array(pair_categories, pa.string()),
        **{name: pa.array(col, pa.float64())
           for name, col in zip(("left", "top", "right", "bottom"), zip(*boxes, strict=True), strict=True)},
        "line": pa.array(lines, pa.int32()),
    })

    per_category: dict[str, dict[str, int]] = {
        cat: {"products": n, "products_in_pairs": 0, "pairs": 0, "scenes": 0}
        for cat, n in sorted(Counter(categories.values()).items())}
    for cat, n in Counter(pair_categories).items():
        per_category[cat]["pairs"] = n
    for cat, n in Counter(categories[p] for p in product_scenes).items():
        per_category[cat]["products_in_pairs"] = n
    for cat, n in Counter(c for c, _ in set(zip(pair_categories, pair_scenes, strict=False))).items():
        per_category[cat]["scenes"] = n

    write_parquet_atomic(out / SCENES, scenes)
    write_parquet_atomic(out / PRODUCTS, products)
    write_parquet_atomic(out / PAIRS, pairs)
    write_text_atomic(out / REJECTS, "".join(json.dumps(r.as_dict()) + "\n" for r in rejects))
    write_catalog(out)  # products with a local image: none until `ctl data fetch`, unless fetched before
    result = IngestResult(out, len(records) + len(rejects), len(records), len(scene_ids), len(product_ids),
                          rejects, per_category, time.perf_counter() - t0)
    write_json_atomic(out / SUMMARY, {
        "source": {"pairs": str(pairs_path.resolve()), "pairs_sha256": sha256_of(pairs_path),
                   "categories": str(categories_path.resolve()), "categories_sha256": sha256_of(categories_path),
                   "url_template": url_template},
        "lines": result.items, "pairs": result.pairs, "scenes": result.scenes, "products": result.products,
        "category_entries_with_invalid_signature": bad_keys,
        "rejected": result.reject_counts,
        "categories": per_category,
    })
    return result


def format_summary(result: IngestResult) -> str:
    width = max([len(c) for c in result.per_category] + [8])
    rows = [f"{'category':<{width}}  {'products':>8}  {'in pairs':>8}  {'pairs':>7}  {'scenes':>7}"]
    for cat, c in result.per_category.items():
        rows.append(f"{cat:<{width}}  {c['products']:>8}  {c['products_in_pairs']:>8}  {c['pairs']:>7}  "
                    f"{c['scenes']:>7}")
    in_pairs = sum(c["products_in_pairs"] for c in result.per_category.values())
    rows.append(f"{'total':<{width}}  {result.products:>8}  {in_pairs:>8}  {result.pairs:>7}  {result.scenes:>7}")
    rejected = ", ".join(f"{n} {k}" for k, n in sorted(result.reject_counts.items())) or "none"
    rows.append(f"{result.items} lines read, {result.pairs} pairs kept, rejected: {rejected} "
                f"({result.seconds:.2f} s)")
    return "\n".join(rows)


@click.command()
@click.option("--pairs", "pairs_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="STL pair file: JSON objects {product, scene, bbox} one per line, or a JSON array.")
@click.option("--categories", "categories_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="STL category file: JSON object signature -> category path.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset dir to write.")
@click.option("--url-template", default=STL_URL_TEMPLATE, show_default=True,
              help="Image URL of a signature, a str.format template over `s`.")
def stl_command(pairs_path: Path, categories_path: Path, out: Path, url_template: str) -> None:
    """Ingest Shop-the-Look pairs + categories into DIR (scenes/products/pairs/catalog parquet)."""
    result = ingest_stl(pairs_path, categories_path, out, url_template=url_template)
    for r in result.rejects[:SHOWN_REJECTS]:
        click.echo(f"{pairs_path}:{r.line}: {r.reason}: {r.detail}", err=True)
    if len(result.rejects) > SHOWN_REJECTS:
        click.echo(f"... and {len(result.rejects) - SHOWN_REJECTS} more in {out / REJECTS}", err=True)
    click.echo(format_summary(result))
    click.echo(f"wrote {out}/{{{SCENES},{PRODUCTS},{PAIRS},{CATALOG},{SUMMARY}}}; "
               f"next: ctl data fetch {out}")
