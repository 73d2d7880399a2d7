"""Dataset and catalogue manifests: the one loader training reads, and the catalogue contract.

Two dataset layouts are accepted by :func:`load_dataset`, detected from the files present.

(a) STL-ingested (written by ``ctl data stl``, images filled in by ``ctl data fetch``)::

    DIR/scenes.parquet    scene_id, image_url, image_path (null until a local path is known)
    DIR/products.parquet  product_id, category, image_url, image_path (null), n_scenes
    DIR/pairs.parquet     scene_id, product_id, category, left, top, right, bottom, line
    DIR/images.parquet    url, image_path, sha256, bytes, width, height   (written by the fetcher)
    DIR/catalog.parquet   the products that have a local image (see below)
    DIR/summary.json      counts per category and rejected lines; DIR/rejects.jsonl the rejects

    A scene's or product's image is its own ``image_path`` when set, otherwise the fetcher's
    ``images.parquet`` entry for its ``image_url``. Relative paths are relative to DIR. Scenes and
    products without a local image are left out, with the pairs that use them (counted in
    ``Dataset.skipped``).

(b) Raw sample layout (written by ``ctl sample-data``)::

    DIR/pairs.jsonl              {"product": id, "scene": id, "bbox": [l, t, r, b]} per line
    DIR/categories.json          {product_id: category}
    DIR/images/scenes/{sid}.jpg
    DIR/images/products/{pid}.jpg
    DIR/catalog.parquet          product_id, image_path (relative to DIR), category

Boxes are normalised to [0, 1] with the origin top left, ``left < right`` and ``top < bottom``.

Catalogue manifest contract (:func:`read_catalog`, used by embed-catalog): a parquet file with
string columns ``product_id`` (unique), ``image_path`` (absolute, or relative to the manifest's
folder) and ``category``; every other column is metadata, kept and carried to retrieval results.
For URL catalogues (STL, or ``ctl data catalog`` with ``image_url``), ``products.parquet`` is the
full list and ``catalog.parquet`` holds only the products whose image is local: empty until
``ctl data fetch DIR`` has run, then rewritten by it (:func:`write_catalog`).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.files import atomic_path

log = logging.getLogger(__name__)

STL_URL_TEMPLATE = "http://i.pinimg.com/400x/{s[0]}{s[1]}/{s[2]}{s[3]}/{s[4]}{s[5]}/{s}.jpg"
SCENES, PRODUCTS, PAIRS, IMAGES, CATALOG = (
    "scenes.parquet", "products.parquet", "pairs.parquet", "images.parquet", "catalog.parquet")
REQUIRED_CATALOG_COLUMNS = ("product_id", "image_path", "category")
# Tolerated float noise at the edges of a normalised box; values within it are clamped to [0, 1].
BOX_EPS = 1e-6
_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]*")


def stl_image_url(signature: str) -> str:
    """The CDN URL of an STL image signature (`http://i.pinimg.com/400x/ab/cd/ef/abcdef....jpg`)."""
    return STL_URL_TEMPLATE.format(s=signature)


class Product(NamedTuple):
    image_path: Path
    category: str


class Pair(NamedTuple):
    scene_id: str
    product_id: str
    bbox: tuple[float, float, float, float]


class PairRecord(NamedTuple):
    line: int
    scene_id: str
    product_id: str
    category: str
    bbox: tuple[float, float, float, float]


class Reject(NamedTuple):
    line: int
    reason: str   # malformed | bbox_out_of_range | bbox_inverted | uncategorised | duplicate
    detail: str
    text: str

    def as_dict(self) -> dict:
        return self._asdict()


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


# ---------------------------------------------------------------------------------------------
# Pair files (STL json lines / array, and the sample's pairs.jsonl)

def _iter_json_items(path: Path) -> Iterator[tuple[int, str, object]]:
    """Yield (line number, raw text, parsed object or ValueError) for a JSON-lines file or array."""
    text = path.read_text(encoding="utf-8-sig")
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":
        try:
            yield from _iter_json_array(text, start)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return
    # raw_decode skips json.loads' argument handling and whitespace regexes (a third of the time)
    raw_decode = json.JSONDecoder().raw_decode
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw or raw.isspace():
            continue
        try:
            line = raw.strip() if raw[0].isspace() or raw[-1].isspace() else raw
            obj, end = raw_decode(line)
            if end != len(line):
                raise json.JSONDecodeError("extra data after the JSON value", line, end)
            yield number, raw, obj
        except ValueError as exc:
            yield number, raw, ValueError(f"invalid JSON: {getattr(exc, 'msg', exc)}")


def _iter_json_array(text: str, pos: int) -> Iterator[tuple[int, str, object]]:
    """Walk a JSON array element by element so each element keeps its line number."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    line, line_pos = 1, 0
    pos = ws.match(text, pos + 1).end()
    if text[pos:pos + 1] == "]":
        return
    while True:
        line += text.count("\n", line_pos, pos)
        line_pos = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError as exc:
            raise ValueError(f"{_line_of(text, exc.pos)}: invalid JSON array element: {exc.msg}") from None
        yield line, text[pos:end], obj
        pos = ws.match(text, end).end()
        if text[pos:pos + 1] == "]":
            return
        if text[pos:pos + 1] != ",":
            raise ValueError(f"{_line_of(text, pos)}: expected ',' or ']' in the JSON array")
        pos = ws.match(text, pos + 1).end()


def _line_of(text: str, pos: int) -> str:
    return f"line {text.count(chr(10), 0, pos) + 1}"


_NUMBER = (int, float)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: bulk parsing allocates many objects and no cycles, and the
    collector would otherwise rescan the growing heap again and again (a third of the ingest time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_box(box) -> tuple[str, str] | tuple[float, float, float, float]:
    """The clamped box, or (reason, detail) when it is malformed, out of range or inverted."""
    if type(box) is not list and type(box) is not tuple or len(box) != 4:
        return "malformed", f"bbox must be a list of 4 numbers, got {json.dumps(box)[:60]}"
    left, top, right, bottom = box
    # type() rather than isinstance: bool is an int subclass and is not a coordinate.
    if (type(left) not in _NUMBER or type(top) not in _NUMBER or type(right) not in _NUMBER
            or type(bottom) not in _NUMBER or not math.isfinite(left + top + right + bottom)):
        return "malformed", f"bbox must hold 4 finite numbers, got {json.dumps(box)[:60]}"
    lo, hi = -BOX_EPS, 1 + BOX_EPS
    if not (lo <= left <= hi and lo <= top <= hi and lo <= right <= hi and lo <= bottom <= hi):
        return "bbox_out_of_range", f"bbox {list(box)} is outside [0, 1]"
    if not (0.0 <= left <= 1.0 and 0.0 <= top <= 1.0 and 0.0 <= right <= 1.0 and 0.0 <= bottom <= 1.0):
        left, top = min(1.0, max(0.0, left)), min(1.0, max(0.0, top))
        right, bottom = min(1.0, max(0.0, right)), min(1.0, max(0.0, bottom))
    left, top, right, bottom = float(left), float(top), float(right), float(bottom)
    if not (left < right and top < bottom):
        return "bbox_inverted", f"bbox {list(box)} is empty or inverted (needs left < right, top < bottom)"
    return left, top, right, bottom


def parse_pairs(
    path: str | os.PathLike,
    categories: Mapping[str, str],
    *,
    id_re: re.Pattern = _ID_RE,
) -> tuple[list[PairRecord], list[Reject]]:
    """Read a pair file; return the valid pairs and the rejected lines (with line numbers).

    Lines are left out when they are not JSON objects with string ``scene``/``product`` ids and a
    4-number ``bbox``, when the box is out of [0, 1] or inverted, when the product has no category,
    or when the same (scene, product) pair appeared on an earlier line.
    A JSON array is also accepted; its elements are numbered by the line they start on.
    """
    with no_gc():
        return _parse_pairs(Path(path), categories, id_re)


def _parse_pairs(path: Path, categories: Mapping[str, str], id_re: re.Pattern) -> tuple[list[PairRecord], list[Reject]]:
    records: list[PairRecord] = []
    rejects: list[Reject] = []
    seen: dict[tuple[str, str], int] = {}
    valid_id = id_re.fullmatch
    for line, raw, obj in _iter_json_items(path):
        reason = None
        if isinstance(obj, ValueError):
            reason, detail = "malformed", str(obj)
        elif type(obj) is not dict:
            reason, detail = "malformed", f"expected a JSON object, got {type(obj).__name__}"
        elif "scene" not in obj or "product" not in obj or "bbox" not in obj:
            missing = [k for k in ("scene", "product", "bbox") if k not in obj]
            reason, detail = "malformed", f"missing key(s) {', '.join(missing)}"
        else:
            scene, product = obj["scene"], obj["product"]
            for name, value in (("scene", scene), ("product", product)):
                if type(value) is not str or not valid_id(value):
                    reason, detail = "malformed", f"{name} id {json.dumps(value)[:60]} is not a valid signature"
                    break
            else:
                box = _check_box(obj["bbox"])
                if type(box[0]) is str:
                    reason, detail = box
                elif not categories.get(product):
                    reason, detail = "uncategorised", f"product {product} has no category"
                else:
                    first = seen.setdefault((scene, product), line)
                    if first != line:
                        reason = "duplicate"
                        detail = f"scene {scene} and product {product} already paired on line {first}"
                    else:
                        records.append(PairRecord(line, scene, product, categories[product], box))
        if reason is not None:
            rejects.append(Reject(line, reason, detail, raw.strip()[:200]))
    return records, rejects


def read_categories(path: str | os.PathLike) -> dict[str, str]:
    """Read a category file: a JSON object mapping product id/signature -> category (path)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object mapping product -> category, "
                         f"got a {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} product(s) have an empty or non-string category, "
                         f"e.g. {bad[0]!r}")
    return {k: v.strip() for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------
# Loader

def load_dataset(root: str | os.PathLike, *, check_files: bool = True) -> Dataset:
    """Load a dataset dir in either layout (see the module docstring) with local image paths.

    Raises ValueError with a readable message when the dir holds neither layout or when no STL
    image has been fetched yet. What was left out (bad pair lines, missing images) is counted in
    ``Dataset.skipped`` and logged; ``pairs`` may be empty when nothing usable is left.
    """
    root = Path(root)
    if (root / PAIRS).exists():
        ds = _load_stl(root, check_files)
    elif (root / "pairs.jsonl").exists() and (root / "categories.json").exists():
        ds = _load_sample(root, check_files)
    else:
        raise ValueError(
            f"{root} is not a dataset dir: expected {PAIRS} (from `ctl data stl`) or "
            "pairs.jsonl + categories.json (from `ctl sample-data`)")
    if ds.skipped:
        log.warning("%s: left out %s", root, ", ".join(f"{n} {k}" for k, n in ds.skipped.items()))
    return ds


def _count(skipped: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        skipped[reason] = skipped.get(reason, 0) + n


def _load_sample(root: Path, check_files: bool) -> Dataset:
    categories = read_categories(root / "categories.json")
    records, rejects = parse_pairs(root / "pairs.jsonl", categories)
    skipped: dict[str, int] = {}
    for r in rejects:
        _count(skipped, f"pair lines {r.reason}")
    exists = (lambda p: p.is_file()) if check_files else (lambda p: True)
    products = {}
    for pid, cat in categories.items():
        path = root / "images" / "products" / f"{pid}.jpg"
        if exists(path):
            products[pid] = Product(path, cat)
        else:
            _count(skipped, "products without image")
    scenes: dict[str, Path] = {}
    missing_scenes: set[str] = set()
    pairs = []
    for r in records:
        if r.scene_id not in scenes and r.scene_id not in missing_scenes:
            path = root / "images" / "scenes" / f"{r.scene_id}.jpg"
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


def read_image_map(root: Path) -> dict[str, str]:
    """url -> image path (as stored: relative to root or absolute) from DIR/images.parquet."""
    if not (root / IMAGES).exists():
        return {}
    t = pq.read_table(root / IMAGES, columns=["url", "image_path"])
    return dict(zip(t.column("url").to_pylist(), t.column("image_path").to_pylist()))


def _resolve_images(root: Path, table: pa.Table, images: Mapping[str, str]) -> list[str | None]:
    urls = table.column("image_url").to_pylist() if "image_url" in table.column_names else [None] * len(table)
    own = table.column("image_path").to_pylist() if "image_path" in table.column_names else [None] * len(table)
    return [p if p else images.get(u) if u else None for p, u in zip(own, urls)]


def _load_stl(root: Path, check_files: bool) -> Dataset:
    for name in (SCENES, PRODUCTS):
        if not (root / name).exists():
            raise ValueError(f"{root}: {PAIRS} is there but {name} is missing; rerun `ctl data stl`")
    images = read_image_map(root)
    scenes_t = pq.read_table(root / SCENES)
    products_t = pq.read_table(root / PRODUCTS)
    pairs_t = pq.read_table(root / PAIRS, columns=["scene_id", "product_id", "left", "top", "right", "bottom"])
    exists = (lambda p: p.is_file()) if check_files else (lambda p: True)
    skipped: dict[str, int] = {}

    scenes: dict[str, Path] = {}
    for sid, p in zip(scenes_t.column("scene_id").to_pylist(), _resolve_images(root, scenes_t, images)):
        path = root / p if p else None
        if path is not None and exists(path):
            scenes[sid] = path
        else:
            _count(skipped, "scenes without local image")
    products: dict[str, Product] = {}
    for pid, cat, p in zip(products_t.column("product_id").to_pylist(), products_t.column("category").to_pylist(),
                           _resolve_images(root, products_t, images)):
        path = root / p if p else None
        if path is not None and exists(path):
            products[pid] = Product(path, cat)
        else:
            _count(skipped, "products without local image")
    if not scenes and not products and not images:
        raise ValueError(f"{root}: no local images yet; run `ctl data fetch {root}` first")

    cols = [pairs_t.column(c).to_pylist() for c in pairs_t.column_names]
    pairs = []
    for sid, pid, left, top, right, bottom in zip(*cols):
        if sid in scenes and pid in products:
            pairs.append(Pair(sid, pid, (left, top, right, bottom)))
        else:
            _count(skipped, "pairs without local image")
    return Dataset(root, "stl", scenes, products, pairs, skipped)


# ---------------------------------------------------------------------------------------------
# Catalogue manifest

def write_parquet_atomic(path: str | os.PathLike, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_catalog(root: str | os.PathLike) -> tuple[int, int]:
    """Rewrite DIR/catalog.parquet from DIR/products.parquet and the fetcher's DIR/images.parquet.

    Keeps the products whose image is local (their own ``image_path`` or a fetched ``image_url``);
    returns (products in the catalogue, products left out for lack of a local image).
    """
    root = Path(root)
    products = pq.read_table(root / PRODUCTS)
    paths = _resolve_images(root, products, read_image_map(root))
    mask = pa.array([p is not None for p in paths], pa.bool_())
    rest = [c for c in products.column_names if c not in REQUIRED_CATALOG_COLUMNS]
    catalog = pa.table(
        {"product_id": products.column("product_id"),
         "image_path": pa.array(paths, pa.string()),
         "category": products.column("category"),
         **{c: products.column(c) for c in rest}}
    ).filter(mask)
    write_parquet_atomic(root / CATALOG, catalog)
    return len(catalog), len(products) - len(catalog)


def read_catalog(path: str | os.PathLike, *, check_files: bool = False) -> pa.Table:
    """Read and validate a catalogue manifest (a parquet file, or a dir holding catalog.parquet).

    Returns a table with ``product_id``, ``image_path`` (absolute), ``category`` first, then the
    metadata columns in their original order. Raises ValueError naming the problem: missing
    columns, empty values, duplicate ids, no product with a local image, or (``check_files``)
    image files that do not exist.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CATALOG
    if not path.exists():
        raise ValueError(f"catalogue manifest {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in REQUIRED_CATALOG_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; "
                         f"found {', '.join(table.column_names) or 'none'}")
    if len(table) == 0:
        hint = (f"; run `ctl data fetch {path.parent}` to download the images"
                if (path.parent / PRODUCTS).exists() else "")
        raise ValueError(f"{path}: no product with a local image{hint}")
    cols = {}
    for name in REQUIRED_CATALOG_COLUMNS:
        col = table.column(name)
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            if not pa.types.is_integer(col.type) or name == "image_path":
                raise ValueError(f"{path}: column {name} must hold strings, found {col.type}")
            col = pc.cast(col, pa.string())
        values = col.to_pylist()
        empty = [i for i, v in enumerate(values) if v is None or not str(v).strip()]
        if empty:
            raise ValueError(f"{path}: {len(empty)} row(s) have an empty {name}, "
                             f"first at row {empty[0]}")
        cols[name] = values
    ids = cols["product_id"]
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for i, pid in enumerate(ids):
            if pid in seen:
                raise ValueError(f"{path}: duplicate product_id {pid!r} (rows {seen[pid]} and {i})")
            seen[pid] = i
    base = path.parent.resolve()
    resolved = [p if os.path.isabs(p) else os.path.join(base, p) for p in cols["image_path"]]
    if check_files:
        absent = [p for p in resolved if not os.path.isfile(p)]
        if absent:
            raise ValueError(f"{path}: {len(absent)} image file(s) do not exist, e.g. {absent[0]}")
    extras = [c for c in table.column_names if c not in REQUIRED_CATALOG_COLUMNS]
    return pa.table({"product_id": pa.array(ids, pa.string()),
                     "image_path": pa.array(resolved, pa.string()),
                     "category": pa.array(cols["category"], pa.string()),
                     **{c: table.column(c) for c in extras}})
