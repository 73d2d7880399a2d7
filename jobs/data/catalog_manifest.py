"""The catalogue manifest contract: the one writer for dataset dirs and the one reader (embed-catalog's).

A manifest is a parquet file with string columns ``product_id`` (unique), ``image_path`` (absolute,
or relative to the manifest's folder) and ``category``; every other column is metadata, kept and
carried to retrieval results. For URL catalogues (STL, or ``ctl data catalog`` with ``image_url``),
``products.parquet`` is the full list and ``catalog.parquet`` holds only the products whose image
is local: empty until ``ctl data fetch DIR`` has run, then rewritten by it (:func:`write_catalog`).
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.errors import ArtifactError
from common.parquet import write_parquet_atomic
from jobs.data.image_map import read_image_map, resolve_images
from jobs.data.layouts import CATALOG, PRODUCTS

REQUIRED_CATALOG_COLUMNS = ("product_id", "image_path", "category")


class ManifestError(ArtifactError):
    """A catalogue manifest that is missing, unreadable or breaks the contract."""


# The required columns, first and in this order; every other column is metadata (any type) after them.
CATALOG_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in REQUIRED_CATALOG_COLUMNS])


def write_catalog_table(path: str | os.PathLike, table: pa.Table) -> None:
    """The one writer of a catalogue manifest: the required columns as strings, first, then the rest, written
    atomically. Raises ManifestError when a required column is missing."""
    missing = [c for c in REQUIRED_CATALOG_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"{path}: a catalogue needs the column(s) {', '.join(missing)}")
    required = [table.column(f.name).cast(f.type) for f in CATALOG_SCHEMA]
    extras = [c for c in table.column_names if c not in REQUIRED_CATALOG_COLUMNS]
    columns = required + [table.column(c) for c in extras]
    schema = pa.schema([*CATALOG_SCHEMA, *(table.schema.field(c) for c in extras)])
    write_parquet_atomic(path, pa.Table.from_arrays(columns, schema=schema))


def write_catalog(root: str | os.PathLike) -> tuple[int, int]:
    """Rewrite DIR/catalog.parquet from DIR/products.parquet and the fetcher's DIR/images.parquet.

    Keeps the products whose image is local (their own ``image_path`` or a fetched ``image_url``);
    returns (products in the catalogue, products left out for lack of a local image).
    """
    root = Path(root)
    products = pq.read_table(root / PRODUCTS)
    paths = resolve_images(products, read_image_map(root))
    mask = pa.array([p is not None for p in paths], pa.bool_())
    rest = [c for c in products.column_names if c not in REQUIRED_CATALOG_COLUMNS]
    catalog = pa.table(
        {"product_id": products.column("product_id"),
         "image_path": pa.array(paths, pa.string()),
         "category": products.column("category"),
         **{c: products.column(c) for c in rest}}
    ).filter(mask)
    write_catalog_table(root / CATALOG, catalog)
    return len(catalog), len(products) - len(catalog)


def read_catalog(path: str | os.PathLike, *, check_files: bool = False) -> pa.Table:
    """Read and validate a catalogue manifest (a parquet file, or a dir holding catalog.parquet).

    Returns a table with ``product_id``, ``image_path`` (absolute), ``category`` first, then the
    metadata columns in their original order. Raises ManifestError naming the problem: missing
    columns, empty values, duplicate ids, no product with a local image, or (``check_files``)
    image files that do not exist.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CATALOG
    if not path.exists():
        raise ManifestError(f"catalogue manifest {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in REQUIRED_CATALOG_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; "
                            f"found {', '.join(table.column_names) or 'none'}")
    if len(table) == 0:
        hint = (f"; run `ctl data fetch {path.parent}` to download the images"
                if (path.parent / PRODUCTS).exists() else "")
        raise ManifestError(f"{path}: no product with a local image{hint}")
    cols = {}
    for name in REQUIRED_CATALOG_COLUMNS:
        col = table.column(name)
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            if not pa.types.is_integer(col.type) or name == "image_path":
                raise ManifestError(f"{path}: column {name} must hold strings, found {col.type}")
            col = pc.cast(col, pa.string())
        values = col.to_pylist()
        empty = [i for i, v in enumerate(values) if v is None or not str(v).strip()]
        if empty:
            raise ManifestError(f"{path}: {len(empty)} row(s) have an empty {name}, first at row {empty[0]}")
        cols[name] = values
    ids = cols["product_id"]
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for i, pid in enumerate(ids):
            if pid in seen:
                raise ManifestError(f"{path}: duplicate product_id {pid!r} (rows {seen[pid]} and {i})")
            seen[pid] = i
    base = path.parent.resolve()
    # a URI (s3://, gs://, hdfs://: read through pyarrow filesystems by embed-catalog) is already absolute
    resolved = [p if os.path.isabs(p) or "://" in p else os.path.join(base, p) for p in cols["image_path"]]
    if check_files:
        absent = [p for p in resolved if not os.path.isfile(p)]
        if absent:
            raise ManifestError(f"{path}: {len(absent)} image file(s) do not exist, e.g. {absent[0]}")
    extras = [c for c in table.column_names if c not in REQUIRED_CATALOG_COLUMNS]
    return pa.table({"product_id": pa.array(ids, pa.string()),
                     "image_path": pa.array(resolved, pa.string()),
                     "category": pa.array(cols["category"], pa.string()),
                     **{c: table.column(c) for c in extras}})
