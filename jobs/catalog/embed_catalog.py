"""`ctl embed-catalog`: catalogue images -> product embeddings in resumable parquet shards.

The job is reader -> embedder -> writer:

- reader (:mod:`jobs.catalog.catalog_images`): DataLoader workers decode and resize each pending row;
  a bad image never raises, it comes back as a reject with its reason.
- embedder: the checkpoint's ``StyleEmbedder`` in eval mode under ``torch.inference_mode``,
  channels_last; on CUDA the backbone runs under bf16 autocast (the heads stay fp32), with pinned
  memory and non-blocking copies.
- writer (:mod:`jobs.catalog.shard_writer`): a background thread that writes each shard once all its
  rows are in, so writing overlaps compute.

The output folder is the contract of :mod:`index.embedding_shards` (read by ``ctl build-index``).
Resume: a shard counts as finished only once the manifest lists it, so a run killed at any point
and started again redoes at most the shards it was working on. A rerun over a complete output is a
no-op. Output made with another checkpoint, catalogue, --limit, shard size or image size is refused
unless --overwrite. A run that embeds nothing at all (every image rejected) fails after writing its
rejects.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common import defaults
from common.config import JobConfig
from common.devices import DEVICE_CHOICES, resolve_device
from common.errors import ArtifactError, InputError, NothingProducedError
from common.files import exclusive_lock, sha256_of
from index.embedding_shards import (
    EMBEDDING,
    FORMAT,
    MANIFEST,
    REJECTS,
    clear_output,
    clear_temp_files,
    finished_shards,
    holds_output,
    load_manifest,
    merge_rejects,
    write_manifest,
)
from jobs.catalog.catalog_images import CatalogImages, collate, load_catalog_table
from jobs.catalog.shard_writer import ShardWriter
from jobs.cli_errors import OneLineCommand
from jobs.data.layouts import CATALOG
from jobs.workers import default_workers, lower_priority
from pipeline.checkpoint import Checkpoint, load_checkpoint

LOCK = ".lock"


class EmbedCatalogError(ArtifactError):
    """The output folder or checkpoint cannot be used as asked; the message is one readable line."""


@dataclasses.dataclass(frozen=True)
class EmbedCatalogConfig(JobConfig):
    """Settings of one embed-catalog run (paths and flags that only steer the run are arguments)."""

    shard_size: int = defaults.SHARD_SIZE
    batch_size: int | None = None       # None: defaults.BATCH_SIZE_CPU, or BATCH_SIZE_GPU on CUDA
    workers: int | None = None          # DataLoader decode workers; None: jobs.workers.default_workers
    device: str = "auto"
    limit: int | None = None            # embed only the first N catalogue rows
    image_size: int | None = None       # None: the backbone's input size (smaller sizes are for tests)

    def __post_init__(self):
        for name, low in (("shard_size", 1), ("batch_size", 1), ("workers", 0), ("limit", 1), ("image_size", 8)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"{name.replace('_', '-')} must be an integer of at least {low}, got {value!r}")


def catalog_fingerprint(table: pa.Table) -> str:
    """sha256 over the rows the job embeds (every column, as strings): a rewritten file with the same
    rows keeps it, a changed or reordered row, or another --limit, changes it."""
    digest = hashlib.sha256()
    for name in table.column_names:
        digest.update(json.dumps([name, table.column(name).to_pylist()]).encode())
    return digest.hexdigest()


def _refusal(old: dict, new: dict) -> str | None:
    if old.get("checkpoint_sha256") != new["checkpoint_sha256"]:
        return (f"made with a different checkpoint (sha256 {str(old.get('checkpoint_sha256'))[:12]}..., "
                f"this one is {new['checkpoint_sha256'][:12]}...)")
    if old.get("catalog_fingerprint") != new["catalog_fingerprint"]:
        if old.get("catalog") == new["catalog"] and old.get("n_input") != new["n_input"]:
            return (f"made from {old.get('n_input')} rows of this catalogue, this run would embed "
                    f"{new['n_input']} (--limit)")
        return f"made from a different catalogue ({old.get('catalog')}, {old.get('n_input')} rows)"
    for key, flag in (("shard_size", "--shard-size"), ("image_size", "image size")):
        if old.get(key) != new[key]:
            return f"written with {flag} {old.get(key)}, this run uses {new[key]}"
    return None


def _summary(out_dir: Path, manifest: dict, *, seconds: float, processed: int, compute_seconds: float,
             resumed: int, noop: bool, device: str) -> dict:
    return {
        "out_dir": str(out_dir),
        "embedded": manifest["embedded"],
        "rejected": manifest["rejected"],
        "n_input": manifest["n_input"],
        "shards": len(manifest["shards"]),
        "resumed_shards": resumed,
        "processed": processed,            # images decoded in this run (embedded + rejected)
        "seconds": seconds,                # the whole call
        "images_per_s": processed / compute_seconds if compute_seconds > 0 else 0.0,
        "rejects": str(out_dir / REJECTS),
        "complete": manifest["complete"],
        "noop": noop,
        "device": device,
        "checkpoint_sha256": manifest["checkpoint_sha256"],
    }


def embed_catalog(manifest: str | os.PathLike = defaults.CATALOG, checkpoint: str | os.PathLike = defaults.CHECKPOINT,
                  out_dir: str | os.PathLike = defaults.EMBEDDINGS_DIR, *,
                  config: EmbedCatalogConfig = EmbedCatalogConfig(), overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Embed a catalogue's product images into parquet shards in out_dir (see the module docstring).

    Returns a summary dict (embedded, rejected, shards, seconds, images_per_s, ...). Raises InputError
    for bad input, EmbedCatalogError for an output folder or checkpoint that cannot be used, and
    NothingProducedError when every image was rejected.
    """
    start = time.perf_counter()
    manifest, checkpoint, out_dir = Path(manifest), Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise EmbedCatalogError(f"no checkpoint at {checkpoint}; run `make train` first (or pass --checkpoint)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    table = load_catalog_table(manifest, config.limit)
    n_input = len(table)
    catalog_file = manifest / CATALOG if manifest.is_dir() else manifest
    device = resolve_device(config.device)
    identity = {
        "checkpoint_sha256": sha256_of(checkpoint),
        "catalog": str(catalog_file.resolve()),
        "catalog_fingerprint": catalog_fingerprint(table),
        "n_input": n_input,
        "shard_size": config.shard_size,
    }
    with exclusive_lock(out_dir / LOCK, EmbedCatalogError(f"another embed-catalog run is writing to {out_dir}")):
        old = None if overwrite else load_manifest(out_dir)
        if old is None and not overwrite and holds_output(out_dir):
            raise EmbedCatalogError(f"{out_dir} holds shards without a {MANIFEST}; use --overwrite to replace them")
        if old is not None:   # refuse (or finish as a no-op) before paying for the model
            reason = _refusal(old, {**identity, "image_size": old.get("image_size")})
            if reason is not None:
                raise EmbedCatalogError(f"{out_dir} was {reason}; use another --out or --overwrite")
            if (old.get("complete") and config.image_size in (None, old.get("image_size"))
                    and all((out_dir / s["name"]).exists() for s in old["shards"])):
                return _summary(out_dir, old, seconds=time.perf_counter() - start, processed=0, compute_seconds=0,
                                resumed=len(old["shards"]), noop=True, device=str(device))

        ckpt = load_checkpoint(checkpoint, device=device)
        size = config.image_size or ckpt.embedder.backbone.input_size
        new = {
            "format": FORMAT,
            **identity,
            "catalog_sha256": sha256_of(catalog_file),
            "checkpoint": str(checkpoint.resolve()),
            "backbone": ckpt.embedder.backbone_name,
            "dim": ckpt.embedder.dim,
            "image_size": size,
            "limit": config.limit,
            "n_shards": math.ceil(n_input / config.shard_size),
            "columns": [*table.column_names, EMBEDDING],
            "rejects": REJECTS,
            "complete": False,
            "shards": [],
        }
        if old is not None and (reason := _refusal(old, new)) is not None:
            raise EmbedCatalogError(f"{out_dir} was {reason}; use another --out or --overwrite")
        if overwrite:
            clear_output(out_dir)
        clear_temp_files(out_dir)
        done = finished_shards(out_dir, old)
        new["shards"] = [done[k] for k in sorted(done)]
        write_manifest(out_dir, new)

        pending = [k for k in range(new["n_shards"]) if k not in done]
        S = config.shard_size
        shard_rows = {k: min((k + 1) * S, n_input) - k * S for k in pending}
        t0 = time.perf_counter()
        processed = _run(table, ckpt, out_dir, new, shard_rows, size=size, device=device, config=config,
                         progress=progress)
        compute_seconds = time.perf_counter() - t0

        merge_rejects(out_dir, new)
        new["complete"] = True
        write_manifest(out_dir, new)
    if new["embedded"] == 0:
        raise NothingProducedError(f"all {new['rejected']} images were rejected, nothing embedded; "
                                   f"see {out_dir / REJECTS}")
    return _summary(out_dir, new, seconds=time.perf_counter() - start, processed=processed,
                    compute_seconds=compute_seconds, resumed=len(done), noop=False, device=str(device))


def _run(table: pa.Table, ckpt: Checkpoint, out_dir: Path, manifest: dict, shard_rows: dict[int, int], *,
         size: int, device: torch.device, config: EmbedCatalogConfig, progress: bool) -> int:
    """Embed the rows of the pending shards; returns how many images were processed."""
    if not shard_rows:
        return 0
    cuda = device.type == "cuda"
    batch_size = config.batch_size or (defaults.BATCH_SIZE_GPU if cuda else defaults.BATCH_SIZE_CPU)
    workers = default_workers(device.type) if config.workers is None else config.workers
    S = manifest["shard_size"]
    rows = np.concatenate([np.arange(k * S, k * S + n) for k, n in sorted(shard_rows.items())])
    loader = DataLoader(
        CatalogImages(table.column("image_path").to_pylist(), rows, size), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate, pin_memory=cuda, prefetch_factor=4 if workers else None,
        persistent_workers=False, worker_init_fn=None if cuda else lower_priority,
    )
    embedder = ckpt.embedder.eval().to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda or cudnn_benchmark     # fixed input shapes: let cuDNN pick
    writer = ShardWriter(out_dir, table, manifest, shard_rows, embedder.dim)
    batches = iter(loader)             # workers fork here, before the writer thread starts
    writer.start()
    bar = tqdm(total=manifest["n_input"], initial=manifest["n_input"] - len(rows), unit="img",
               desc="embed-catalog", disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        with torch.inference_mode():
            for batch in batches:
                embeddings, ready = None, None
                if batch.images is not None:
                    x = batch.images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    with autocast:
                        fmap = embedder.backbone(x)
                    f_p = embedder.product_from_features(fmap)   # heads in fp32, unit rows
                    if cuda:
                        embeddings = f_p.to("cpu", non_blocking=True)
                        ready = torch.cuda.Event()
                        ready.record()
                    else:
                        embeddings = f_p
                writer.put(batch.rows, embeddings, ready, batch.rejects)
                bar.update(len(batch.rows) + len(batch.rejects))
        writer.finish()
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        bar.close()
        writer.abandon()               # a no-op after finish(); after a failure, stops without finishing shards
        del batches
    return len(rows)


@click.command("embed-catalog", cls=OneLineCommand)
@click.option("--manifest", type=click.Path(path_type=Path), default=defaults.CATALOG, show_default=True,
              help="Catalogue manifest (parquet: product_id, image_path, category, ...) or its folder.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=defaults.CHECKPOINT, show_default=True,
              help="Trained checkpoint (make train).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=defaults.EMBEDDINGS_DIR,
              show_default=True, help="Output folder for part-*.parquet shards.")
@click.option("--shard-size", type=click.IntRange(min=1), default=defaults.SHARD_SIZE, show_default=True,
              help="Catalogue rows per shard.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help=f"Images per batch [{defaults.BATCH_SIZE_CPU} on CPU, {defaults.BATCH_SIZE_GPU} on GPU].")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader decode workers [CPU: 1 per 8 cores, at least 1; GPU: min(4, cores)].")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace output made with another checkpoint or catalogue.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Embed only the first N rows (quick runs).")
@click.option("--image-size", type=click.IntRange(min=8), default=None, hidden=True,
              help="Resize to this size instead of the backbone's input size (tests only).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed_catalog_command(manifest, checkpoint, out_dir, shard_size, batch_size, workers, device, overwrite, limit,
                          image_size, quiet) -> None:
    """Embed the catalogue's product images into parquet shards (resumable; bad images go to rejects.jsonl)."""
    config = EmbedCatalogConfig(shard_size=shard_size, batch_size=batch_size, workers=workers, device=device,
                                limit=limit, image_size=image_size)
    s = embed_catalog(manifest, checkpoint, out_dir, config=config, overwrite=overwrite, progress=not quiet)
    plural = "s" if s["shards"] != 1 else ""
    if s["noop"]:
        click.echo(f"{s['out_dir']} is already complete: embedded {s['embedded']}, rejected {s['rejected']}, "
                   f"{s['shards']} shard{plural} (nothing to do)")
        return
    resumed = f", {s['resumed_shards']} resumed" if s["resumed_shards"] else ""
    click.echo(f"embedded {s['embedded']}, rejected {s['rejected']} (see {s['rejects']}), "
               f"{s['shards']} shard{plural}{resumed} in {s['out_dir']}; {s['seconds']:.1f} s, "
               f"{s['images_per_s']:.1f} img/s on {s['device']}")


if __name__ == "__main__":  # python -m jobs.catalog.embed_catalog ...
    embed_catalog_command()
