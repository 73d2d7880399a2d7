"""`ctl update-demo`: change 5% of the sample catalogue, embed only the changes, update the index, retrieve once."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from common import defaults
from common.errors import CtlError
from index.build import build_index
from index.embedding_shards import MANIFEST, read_manifest
from index.layout import read_info
from index.update import update_index
from jobs.catalog.embed_catalog import EmbedCatalogConfig, embed_catalog
from jobs.data.catalog_manifest import read_catalog, write_catalog_table
from jobs.data.layouts import CATALOG
from jobs.demo import pick_scene
from jobs.retrieve_cli import format_table
from retrieval.retriever import Retriever

CHANGED_DIR = defaults.DATA_DIR / "sample-changed"
CHANGED_EMBEDDINGS = defaults.DATA_DIR / "embeddings" / "sample-changed"
FRACTION = 0.05


def change_catalogue(catalog: Path, out_dir: Path, *, fraction: float = FRACTION, seed: int = defaults.SEED) -> dict:
    """A copy of the catalogue with `fraction` of its products touched: a third get a new image (mirrored and
    recoloured), a third are removed, and as many new products are added (new ids, new images)."""
    table = read_catalog(catalog)
    rng = np.random.default_rng(seed)
    n = len(table)
    touched = rng.choice(n, size=max(3, int(round(n * fraction))), replace=False)
    changed, removed, sources = np.array_split(touched, 3)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    paths = table.column("image_path").to_pylist()

    def variant(src: str, dst: Path, k: int) -> str:
        with Image.open(src) as im:
            rgb = ImageOps.mirror(im.convert("RGB"))
        shifted = (np.asarray(rgb, dtype=np.int16) + np.array([40, -30, 20]) * (1 + k % 3)) % 256
        Image.fromarray(shifted.astype(np.uint8)).save(dst, quality=90)
        return str(dst.resolve())

    for k, i in enumerate(changed):
        paths[i] = variant(paths[i], img_dir / f"{table.column('product_id')[i].as_py()}.jpg", k)
    keep = np.setdiff1d(np.arange(n), removed)
    kept = table.set_column(table.column_names.index("image_path"), "image_path", pa.array(paths)).take(keep)
    new_ids = [f"new-{table.column('product_id')[i].as_py()[:12]}" for i in sources]
    added = pa.table({"product_id": new_ids,
                      "image_path": [variant(paths[i], img_dir / f"{pid}.jpg", k + 1) for k, (i, pid) in
                                     enumerate(zip(sources, new_ids, strict=True))],
                      "category": table.column("category").take(pa.array(sources)).to_pylist()})
    extras = [c for c in table.column_names if c not in added.column_names]
    for c in extras:
        added = added.append_column(c, pa.nulls(len(added), table.schema.field(c).type))
    out = pa.concat_tables([kept, added.select(table.column_names)])
    write_catalog_table(out_dir / CATALOG, out)
    return {"changed": len(changed), "removed": len(removed), "added": len(added), "n": len(out),
            "new_ids": new_ids}


@click.command("update-demo")
@click.option("--k", "k", type=click.IntRange(min=1), default=defaults.DEMO_K, show_default=True,
              help="products in the retrieval after the update")
@click.option("--seed", type=click.IntRange(min=0), default=defaults.SEED, show_default=True)
def update_demo_command(k: int, seed: int) -> None:
    """Change 5% of the sample catalogue, embed only what changed, update the index and retrieve once."""
    catalog, checkpoint = defaults.CATALOG, defaults.CHECKPOINT
    base, index_dir = defaults.EMBEDDINGS_DIR, defaults.INDEX_DIR
    for need in (catalog, checkpoint, base / MANIFEST):
        if not need.exists():
            raise click.ClickException(f"{need} is missing: run `make build-index` (or `make demo`) first")
    started = time.perf_counter()
    try:
        source = read_info(index_dir).source.catalog_fingerprint
        if source != read_manifest(base).catalog_fingerprint:
            click.echo(f"[0/3] index          {index_dir} was not built from {base}: rebuilding it first")
            build_index(base, index_dir)
        t0 = time.perf_counter()
        changes = change_catalogue(catalog, CHANGED_DIR, seed=seed)
        click.echo(f"[1/3] catalogue      {CHANGED_DIR / CATALOG}: {changes['changed']} images changed, "
                   f"{changes['removed']} products removed, {changes['added']} added "
                   f"({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        summary = embed_catalog(CHANGED_DIR / CATALOG, checkpoint, CHANGED_EMBEDDINGS, base=base,
                                config=EmbedCatalogConfig(), overwrite=True, progress=False)
        inc = summary["incremental"]
        click.echo(f"[2/3] embed          {inc['reembedded']} of {summary['n_input']} images embedded "
                   f"(added {inc['added']}, changed {inc['changed']}, removed {inc['removed']}) into "
                   f"{CHANGED_EMBEDDINGS} ({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        info = update_index(index_dir, CHANGED_EMBEDDINGS)
        up = info.update
        click.echo(f"[3/3] update-index   {up.from_version} -> {info.version}: {up.upserted} added or "
                   f"replaced, {up.dropped} dropped, recall@{info.recall.k} {info.recall.after_update:.4f}, "
                   f"rebuild due: {'yes (' + '; '.join(up.rebuild_reasons) + ')' if up.rebuild_due else 'no'} "
                   f"({time.perf_counter() - t0:.1f} s)")
        scene = pick_scene(defaults.SAMPLE_DIR, defaults.RUN_DIR)
        retriever = Retriever.load(checkpoint=checkpoint, index_dir=index_dir)
        result = retriever.retrieve(scene, k=k)
    except CtlError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None
    click.echo("")
    click.echo(format_table(result, scene=str(scene), n_products=len(retriever)))
    new = [h.product_id for h in result.hits if h.product_id in set(changes["new_ids"])]
    click.echo("")
    click.echo(f"update demo done in {time.perf_counter() - started:.1f} s; index {index_dir} now serves "
               f"{info.version} ({info.n} products" + (f", {len(new)} of them new in this top {k}" if new else "")
               + "). `make demo` rebuilds the index from the original sample.")
