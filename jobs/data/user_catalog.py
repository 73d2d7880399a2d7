"""`ctl data catalog`: a folder tree or a CSV/parquet table -> a catalogue manifest for embed-catalog.

Sources:

* a folder: ``SOURCE/<category>/.../<name>.jpg``; the top-level sub-folder is the category and the
  path below SOURCE without its suffix is the product id (``shoes/nike/123``);
* a ``.csv`` or ``.parquet`` table with ``product_id``, ``category`` and ``image_path`` (absolute or
  relative to the table's folder) and/or ``image_url`` (fetched later by ``ctl data fetch DIR``).
  Every other column is kept as metadata and carried to retrieval results.

Writes ``DIR/products.parquet`` (all products), ``DIR/catalog.parquet`` (the ones with a local
image; see ``jobs.data.catalog_manifest``) and ``DIR/summary.json``. A folder's images are the files
Pillow decodes (``jobs.data.image_formats``: JPEG, PNG, WebP, GIF, BMP, TIFF), whatever their case.
"""
from __future__ import annotations

import difflib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.errors import InputError
from common.files import write_json_atomic
from common.parquet import write_parquet_atomic
from jobs.data.catalog_manifest import write_catalog
from jobs.data.image_formats import IMAGE_SUFFIXES
from jobs.data.image_map import stored_path
from jobs.data.layouts import CATALOG, PRODUCTS, SUMMARY

KNOWN_COLUMNS = ("product_id", "category", "image_path", "image_url")
SHOWN = 5


class CatalogError(InputError):
    """A problem with the user's catalogue source, phrased for the user."""


@dataclass
class CatalogResult:
    out: Path
    products: int
    local: int                   # products with a local image file
    remote: int                  # products with an image URL to fetch
    per_category: dict[str, int]
    metadata_columns: list[str]
    dropped_missing: int = 0
    notes: list[str] = field(default_factory=list)


def _examples(items: list[str]) -> str:
    more = f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more


# ---------------------------------------------------------------------------------------------
# Sources

def _from_folder(src: Path, notes: list[str]) -> tuple[pa.Table, list[str]]:
    ids, paths, cats, where = [], [], [], []
    at_root, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(src)
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(rel.as_posix())
            elif len(rel.parts) == 1:
                at_root.append(rel.as_posix())
            else:
                ids.append(rel.with_suffix("").as_posix())
                paths.append(str(path.resolve()))
                cats.append(rel.parts[0])
                where.append(rel.as_posix())
    if at_root:
        raise CatalogError(f"{src}: {len(at_root)} image(s) are not in a category sub-folder "
                           f"({_examples(at_root)}); move each into SOURCE/<category>/")
    if not ids:
        raise CatalogError(f"{src}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} "
                           "files in category sub-folders)")
    if ignored:
        notes.append(f"ignored {len(ignored)} non-image file(s): {_examples(ignored)}")
    table = pa.table({"product_id": ids, "category": cats, "image_path": paths,
                      "image_url": pa.nulls(len(ids), pa.string())})
    return table, where


def _read_table(src: Path) -> tuple[pa.Table, str]:
    """The table and how to name its rows in messages ("line" for CSV, "row" for parquet)."""
    suffix = src.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            header = src.open(encoding="utf-8-sig").readline()
            delimiter = "\t" if suffix == ".tsv" else ","
            names = [h.strip() for h in header.rstrip("\r\n").split(delimiter)]
            # ids and paths stay text: "00123" must not become the integer 123
            types = {n: pa.string() for n in names if n in KNOWN_COLUMNS}
            table = pacsv.read_csv(src, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                   convert_options=pacsv.ConvertOptions(column_types=types,
                                                                        strings_can_be_null=True))
            return table.rename_columns([c.strip() for c in table.column_names]), "line"
        if suffix in (".parquet", ".pq"):
            return pq.read_table(src), "row"
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{src}: cannot read it as {suffix[1:]}: {exc}") from None
    raise CatalogError(f"{src}: expected a folder, a .csv or a .parquet file")


def _column_text(table: pa.Table, name: str, src: Path) -> list[str | None]:
    col = table.column(name)
    if pa.types.is_integer(col.type) and name in ("product_id", "category"):
        col = pc.cast(col, pa.string())
    elif not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        raise CatalogError(f"{src}: column {name} must hold text, found {col.type}")
    return [v.strip() if isinstance(v, str) and v.strip() else None for v in col.to_pylist()]


def _from_table(src: Path, notes: list[str]) -> tuple[pa.Table, list[str], list[str]]:
    table, unit = _read_table(src)
    columns = table.column_names
    first_row = 2 if unit == "line" else 0          # CSV: line 1 is the header
    where = [f"{unit} {i + first_row}" for i in range(len(table))]

    dupes = [c for c, n in Counter(columns).items() if n > 1]
    if dupes:
        raise CatalogError(f"{src}: column(s) {', '.join(dupes)} appear more than once")
    required = ["product_id", "category"]
    if "image_path" not in columns and "image_url" not in columns:
        required.append("image_path or image_url")
    missing = [c for c in required if c not in columns]
    if missing:
        hints = []
        for m in missing:
            for want in m.split(" or "):
                close = difflib.get_close_matches(want, [c.lower() for c in columns], n=1, cutoff=0.75)
                if close:
                    actual = next(c for c in columns if c.lower() == close[0])
                    hints.append(f"rename {actual!r} to {want!r}?")
        raise CatalogError(f"{src}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}"
                           + (f" ({' '.join(hints)})" if hints else ""))
    extras = [c for c in columns if c not in KNOWN_COLUMNS]
    if extras:
        notes.append(f"keeping {len(extras)} extra column(s) as metadata: {', '.join(extras)}")
    if len(table) == 0:
        raise CatalogError(f"{src}: no rows")

    ids = _column_text(table, "product_id", src)
    cats = _column_text(table, "category", src)
    paths = _column_text(table, "image_path", src) if "image_path" in columns else [None] * len(table)
    urls = _column_text(table, "image_url", src) if "image_url" in columns else [None] * len(table)
    for name, values in (("product_id", ids), ("category", cats)):
        empty = [where[i] for i, v in enumerate(values) if v is None]
        if empty:
            raise CatalogError(f"{src}: empty {name} at {_examples(empty)}")
    no_image = [where[i] for i, (p, u) in enumerate(zip(paths, urls, strict=False)) if p is None and u is None]
    if no_image:
        raise CatalogError(f"{src}: neither image_path nor image_url at {_examples(no_image)}")
    bad_urls = [f"{where[i]} ({u})" for i, u in enumerate(urls)
                if u is not None and not u.lower().startswith(("http://", "https://"))]
    if bad_urls:
        raise CatalogError(f"{src}: image_url must start with http:// or https:// at {_examples(bad_urls)}")
    base = src.parent.resolve()
    paths = [p if p is None or os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in paths]
    out = pa.table({"product_id": pa.array(ids, pa.string()), "category": pa.array(cats, pa.string()),
                    "image_path": pa.array(paths, pa.string()), "image_url": pa.array(urls, pa.string()),
                    **{c: table.column(c) for c in extras}})
    return out, where, extras


# ---------------------------------------------------------------------------------------------
# Build

def build_catalog(source: str | os.PathLike, out: str | os.PathLike, *, skip_missing: bool = False) -> CatalogResult:
    """Validate a folder tree or table and write DIR/products.parquet, catalog.parquet, summary.json."""
    source, out = Path(source), Path(out)
    notes: list[str] = []
    if source.is_dir():
        table, where = _from_folder(source, notes)
        extras: list[str] = []
    elif source.is_file():
        table, where, extras = _from_table(source, notes)
    else:
        raise CatalogError(f"{source}: no such file or folder")

    ids = table.column("product_id").to_pylist()
    first: dict[str, str] = {}
    dupes = []
    for pid, w in zip(ids, where, strict=False):
        if pid in first:
            dupes.append(f"{pid!r} at {first[pid]} and {w}")
        else:
            first[pid] = w
    if dupes:
        raise CatalogError(f"{source}: {len(dupes)} duplicate product_id(s): {_examples(dupes)}")

    paths = table.column("image_path").to_pylist()
    absent = [i for i, p in enumerate(paths) if p is not None and not os.path.isfile(p)]
    dropped = 0
    if absent:
        listed = [f"{where[i]}: {paths[i]}" for i in absent]
        if not skip_missing:
            raise CatalogError(f"{source}: {len(absent)} image file(s) do not exist: {_examples(listed)} "
                               "(fix the paths, or pass --skip-missing to leave those products out)")
        notes.append(f"left out {len(absent)} product(s) whose image file does not exist: {_examples(listed)}")
        absent_set = set(absent)
        keep = pa.array([i not in absent_set for i in range(len(table))])
        table = table.filter(keep)
        dropped = len(absent)
        if len(table) == 0:
            raise CatalogError(f"{source}: no product left once the missing images are left out")

    out.mkdir(parents=True, exist_ok=True)
    stored = [None if p is None else stored_path(p, out) for p in table.column("image_path").to_pylist()]
    table = table.set_column(table.column_names.index("image_path"), "image_path", pa.array(stored, pa.string()))
    write_parquet_atomic(out / PRODUCTS, table)
    local, remote = write_catalog(out)
    per_category = dict(sorted(Counter(table.column("category").to_pylist()).items()))
    result = CatalogResult(out, len(table), local, remote, per_category, extras, dropped, notes)
    write_json_atomic(out / SUMMARY, {
        "source": str(source.resolve()), "products": result.products, "local_images": local,
        "images_to_fetch": remote, "left_out_missing_files": dropped, "metadata_columns": extras,
        "categories": per_category})
    return result


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Catalogue dir to write.")
@click.option("--skip-missing", is_flag=True, help="Leave out products whose image file does not exist.")
def catalog_command(source: Path, out: Path, skip_missing: bool) -> None:
    """Build a catalogue manifest from a folder tree (category = sub-folder) or a CSV/parquet table."""
    result = build_catalog(source, out, skip_missing=skip_missing)
    for note in result.notes:
        click.echo(note, err=True)
    width = max([len(c) for c in result.per_category] + [8])
    for cat, n in result.per_category.items():
        click.echo(f"{cat:<{width}}  {n:>7}")
    click.echo(f"{result.products} products in {len(result.per_category)} categories; wrote {out / PRODUCTS} "
               f"and {out / CATALOG} ({result.local} with a local image)")
    if result.remote:
        click.echo(f"{result.remote} image(s) are URLs: run `ctl data fetch {out}` to download them")
