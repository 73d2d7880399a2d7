"""`ctl embed-catalog`: catalogue images -> product embeddings in resumable parquet shards.

The job is reader -> embedder -> writer, run by one of two engines (the seam is
:mod:`jobs.catalog.embed_job`):

- ``--engine local`` (:mod:`jobs.catalog.local_engine`, the default): Pillow worker processes, the
  device's JPEG decoder or both (``--decode``) decode and resize each pending row into one ordered
  stream (:mod:`jobs.catalog.catalog_images`; a bad image never raises, it comes back as a reject with
  its reason); this process embeds with the checkpoint's ``StyleEmbedder``.
- ``--engine ray`` (:mod:`jobs.catalog.ray_engine`): the same reader and model on Ray Data, an actor
  pool of ``--workers`` embedders, on a local Ray instance or a cluster (``--address``).

Either way a writer thread (:mod:`jobs.catalog.shard_writer`) in this process writes each shard once
all its rows are in, so the output folder is the contract of :mod:`index.embedding_shards` (read by
``ctl build-index``) whatever the engine. Resume: a shard counts as finished only once the manifest
lists it, so a run killed at any point and started again redoes at most the shards it was working on.
A rerun over a complete output is a no-op. Output made with another checkpoint, catalogue, --limit,
shard size, image size, --jpeg-draft setting or --base is refused unless --overwrite. What to do with
the output folder (start, overwrite, resume, nothing, refuse) is decided by :func:`plan_run`, a pure
function of the folder's manifest and the run asked for, before the model is loaded. A run that embeds
nothing at all (every image rejected) fails after writing its rejects.

``--incremental --base DIR`` (:mod:`jobs.catalog.incremental`) embeds only the products that are new
or whose image bytes changed since DIR, copies the other embeddings, and records the delta.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import torch

from common import defaults
from common.devices import DEVICE_CHOICES, resolve_device
from common.errors import ArtifactError, InputError, NothingProducedError
from common.files import exclusive_lock, sha256_of
from common.progress import progress_bar
from index.embedding_shards import (
    BASE_COLUMNS,
    CHANGES,
    EMBEDDING,
    IMAGE_HASH,
    MANIFEST,
    REJECTS,
    SHARD_GLOB,
    EmbeddingsManifest,
    IncrementalRecord,
    Manifest,
    ShardEntry,
    clear_output,
    clear_temp_files,
    holds_output,
    load_manifest,
    merge_rejects,
    read_manifest,
    read_metadata,
    write_delta,
    write_manifest,
)
from jobs.backbone_graph import TRACE_MIN_IMAGES, GraphChoice, choose_graph
from jobs.catalog import local_engine, ray_engine
from jobs.catalog.catalog_images import load_catalog_table
from jobs.catalog.embed_job import DECODES, ENGINES, EmbedCatalogConfig, EmbedJob, Engine, compile_backbone
from jobs.catalog.incremental import BaseFolder, delta, hash_images, reusable_rows, reuse_loader
from jobs.catalog.shard_writer import ShardWriter
from jobs.cli_errors import OneLineCommand
from jobs.data.layouts import CATALOG
from pipeline.backbones import traced_backbone
from pipeline.checkpoint import load_checkpoint

__all__ = ["EmbedCatalogConfig", "EmbedCatalogError", "Plan", "embed_catalog", "embed_catalog_command", "plan_run"]
LOCK = ".lock"
RUNNERS: dict[str, Engine] = {"local": local_engine.open_engine, "ray": ray_engine.open_engine}
log = logging.getLogger(__name__)


class EmbedCatalogError(ArtifactError):
    """The output folder or checkpoint cannot be used as asked; the message is one readable line."""


def catalog_fingerprint(table: pa.Table) -> str:
    """sha256 over the rows the job embeds (every column, as strings): a rewritten file with the same
    rows keeps it, a changed or reordered row, or another --limit, changes it."""
    digest = hashlib.sha256()
    for name in table.column_names:
        digest.update(json.dumps([name, table.column(name).to_pylist()]).encode())
    return digest.hexdigest()


# -- the plan: what to do with the output folder, decided from the manifests alone ----------------

ACTIONS = ("start", "overwrite", "resume", "noop", "refuse")


@dataclass(frozen=True)
class Plan:
    """What a run does with its output folder, and why: start it, overwrite it, resume its finished shards,
    nothing (it is complete), or refuse (its output was made by another run)."""

    action: str
    reason: str
    finished: tuple[ShardEntry, ...] = ()     # resume: the shards kept


def refusal(old: EmbeddingsManifest, new: EmbeddingsManifest) -> str | None:
    """Why a folder written as `old` cannot be continued by the run `new` (None: it can).
    `new.image_size` None means "not known yet" (the backbone's own size) and is not compared."""
    if old.checkpoint_sha256 != new.checkpoint_sha256:
        return (f"made with a different checkpoint (sha256 {old.checkpoint_sha256[:12]}..., "
                f"this one is {new.checkpoint_sha256[:12]}...)")
    if old.catalog_fingerprint != new.catalog_fingerprint:
        if old.catalog == new.catalog and old.n_input != new.n_input:
            return f"made from {old.n_input} rows of this catalogue, this run would embed {new.n_input} (--limit)"
        return f"made from a different catalogue ({old.catalog}, {old.n_input} rows)"
    if old.base_fingerprint != new.base_fingerprint:
        if new.base_fingerprint is None:
            return "made by an incremental run (--base), this run is a full one"
        return "made without --base or from another --base than this incremental run's"
    if old.shard_size != new.shard_size:
        return f"written with --shard-size {old.shard_size}, this run uses {new.shard_size}"
    if new.image_size is not None and old.image_size != new.image_size:
        return f"written with image size {old.image_size}, this run uses {new.image_size}"
    if old.jpeg_draft != new.jpeg_draft:
        said = ("with --jpeg-draft (large JPEGs decoded at a reduced scale), this run decodes them at full scale"
                if old.jpeg_draft else "without --jpeg-draft, this run decodes large JPEGs at a reduced scale")
        return f"written {said}: its embeddings would differ slightly from shard to shard"
    return None


def plan_run(old: EmbeddingsManifest | None, new: EmbeddingsManifest, *, overwrite: bool, holds_output: bool,
             present: frozenset[str]) -> Plan:
    """Decide what to do with the output folder: `old` is its manifest (None: it has none), `new` the run
    asked for, `holds_output` whether shard files are there, `present` the names of the shard files there."""
    if overwrite:
        return Plan("overwrite", "--overwrite: any earlier output is removed first")
    if old is None:
        if holds_output:
            return Plan("refuse", f"holds shards without a {MANIFEST}")
        return Plan("start", "no earlier output")
    reason = refusal(old, new)
    if reason is not None:
        return Plan("refuse", f"was {reason}")
    finished = tuple(s for s in sorted(old.shards, key=lambda s: s.index) if s.name in present)
    if old.complete and len(finished) == len(old.shards):
        return Plan("noop", "complete, made by the same checkpoint, catalogue and settings", finished)
    return Plan("resume", f"{len(finished)} of {old.n_shards or '?'} shards finished", finished)


def _wanted(table: pa.Table, catalog_file: Path, checkpoint_sha256: str, config: EmbedCatalogConfig,
            base_manifest: Manifest | None) -> EmbeddingsManifest:
    """The run asked for, as far as it is known before the model is loaded (image size None: the backbone's)."""
    return EmbeddingsManifest(
        checkpoint_sha256=checkpoint_sha256, catalog=str(catalog_file.resolve()),
        catalog_fingerprint=catalog_fingerprint(table), n_input=len(table), shard_size=config.shard_size,
        n_shards=math.ceil(len(table) / config.shard_size), image_size=config.image_size, limit=config.limit,
        jpeg_draft=config.jpeg_draft, engine=config.engine,
        base_fingerprint=None if base_manifest is None else _folder_fingerprint(base_manifest))


def _refuse(out_dir: Path, plan: Plan) -> None:
    if plan.action == "refuse":
        raise EmbedCatalogError(f"{out_dir} {plan.reason}; use another --out or --overwrite")


# -- the run --------------------------------------------------------------------------------------

def embed_catalog(manifest: str | os.PathLike = defaults.CATALOG, checkpoint: str | os.PathLike = defaults.CHECKPOINT,
                  out_dir: str | os.PathLike = defaults.EMBEDDINGS_DIR, *,
                  config: EmbedCatalogConfig | None = None, overwrite: bool = False,
                  progress: bool = True, base: str | os.PathLike | None = None) -> dict:
    """Embed a catalogue's product images into parquet shards in out_dir (see the module docstring).

    With `base` (a complete embeddings folder made with the same checkpoint), only products that are
    new or whose image changed are embedded; the others' embeddings are copied and `_delta.parquet`
    records what changed. Returns a summary dict (embedded, rejected, shards, seconds, images_per_s, ...).
    Raises InputError for bad input, EmbedCatalogError for an output folder or checkpoint that cannot be
    used, and NothingProducedError when every image was rejected.
    """
    start = time.perf_counter()
    config = config or EmbedCatalogConfig()
    manifest, checkpoint, out_dir = Path(manifest), Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise EmbedCatalogError(f"no checkpoint at {checkpoint}; train one first (`ctl train` or `make train`) "
                                "or pass --checkpoint")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    base = None if base is None else Path(base)
    if base is not None and out_dir.resolve() == base.resolve():
        raise InputError(f"--base and --out are the same folder ({out_dir}); write the new folder elsewhere")
    base_manifest = None if base is None else read_manifest(base)
    table = load_catalog_table(manifest, config.limit)
    catalog_file = manifest / CATALOG if manifest.is_dir() else manifest
    device = resolve_device(config.device)
    new = _wanted(table, catalog_file, sha256_of(checkpoint), config, base_manifest)
    with exclusive_lock(out_dir / LOCK, EmbedCatalogError(f"another embed-catalog run is writing to {out_dir}")):
        old = None if overwrite else load_manifest(out_dir)
        present = frozenset(p.name for p in out_dir.glob(SHARD_GLOB)) if out_dir.is_dir() else frozenset()
        plan = plan_run(old, new, overwrite=overwrite, holds_output=holds_output(out_dir), present=present)
        _refuse(out_dir, plan)   # refuse (or finish as a no-op) before paying for the model
        if plan.action == "noop":
            return _summary(out_dir, old, seconds=time.perf_counter() - start, processed=0, compute_seconds=0,
                            resumed=len(old.shards), noop=True, device=str(device), engine=config.engine)
        ckpt = load_checkpoint(checkpoint, device=device)
        new = dataclasses.replace(new, image_size=config.image_size or ckpt.embedder.backbone.input_size,
                                  backbone=ckpt.embedder.backbone_name, dim=ckpt.embedder.dim,
                                  catalog_sha256=sha256_of(catalog_file), checkpoint=str(checkpoint.resolve()),
                                  columns=[*table.column_names, IMAGE_HASH, EMBEDDING],
                                  decode=config.decode_on(device))
        plan = plan_run(old, new, overwrite=overwrite, holds_output=holds_output(out_dir), present=present)
        _refuse(out_dir, plan)   # now with the backbone's image size
        compile_seconds = None
        batch = config.batch_size or (defaults.BATCH_SIZE_GPU if device.type == "cuda" else defaults.BATCH_SIZE_CPU)
        if config.compile:
            compile_seconds = compile_backbone(ckpt.embedder, device, new.image_size, batch)
        graph = choose_graph(device.type, _pending_images(new, plan.finished), compile=config.compile,
                             asked=config.trace)
        log.info("backbone: %s (%s)", graph.name, graph.reason, extra={"graph": graph.name})
        backbone, trace_seconds = None, None
        if graph.traced and config.engine == "local":   # Ray actors trace their own (ray_engine.ProductEmbedder)
            backbone, trace_seconds = _traced_and_warm(ckpt.embedder.backbone, device, new.image_size, batch)
        if plan.action == "overwrite":
            clear_output(out_dir)
        clear_temp_files(out_dir)
        done = {s.index: s for s in plan.finished}
        new.shards = list(plan.finished)
        write_manifest(out_dir, new)
        t0 = time.perf_counter()
        processed = _embed_pending(table, ckpt, checkpoint, device, config, out_dir, new, done, base, progress,
                                   graph=graph, backbone=backbone)
        compute_seconds = time.perf_counter() - t0
    if new.embedded == 0:
        raise NothingProducedError(f"all {new.rejected} images were rejected, nothing embedded; "
                                   f"see {out_dir / REJECTS}")
    return _summary(out_dir, new, seconds=time.perf_counter() - start, processed=processed,
                    compute_seconds=compute_seconds, resumed=len(done), noop=False, device=str(device),
                    engine=config.engine, compile_seconds=compile_seconds, graph=graph, trace_seconds=trace_seconds)


def _pending_images(manifest: EmbeddingsManifest, finished: Sequence[ShardEntry]) -> int:
    """Catalogue rows outside the finished shards: what this run decodes at most (an incremental run reuses some)."""
    size, done = manifest.shard_size, {s.index for s in finished}
    return sum(min(size, manifest.n_input - k * size) for k in range(manifest.n_shards) if k not in done)


def _traced_and_warm(backbone, device: torch.device, size: int, batch: int) -> tuple[torch.jit.ScriptModule, float]:
    """The backbone's traced graph after two forwards of a full batch (the profiling executor's passes), and the
    seconds it took: reported apart from the steady-state rate, as a compile is."""
    started = time.perf_counter()
    graph = traced_backbone(backbone, size=size, device=device)
    warm = torch.zeros((batch, 3, size, size), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        for _ in range(2):
            graph(warm.contiguous(memory_format=torch.channels_last))
    return graph, time.perf_counter() - started


def _embed_pending(table: pa.Table, ckpt, checkpoint: Path, device, config: EmbedCatalogConfig, out_dir: Path,
                   new: EmbeddingsManifest, done: dict[int, ShardEntry], base: Path | None, progress: bool, *,
                   graph: GraphChoice, backbone=None) -> int:
    """Embed the rows of the shards not yet finished (less those reused from `base`), write them, merge the
    rejects, record the delta of an incremental run, mark the manifest complete; returns the images processed."""
    size = new.shard_size
    pending = [k for k in range(new.n_shards) if k not in done]
    rows = np.concatenate([np.arange(k * size, min((k + 1) * size, new.n_input)) for k in pending]
                          or [np.zeros(0)]).astype(np.int64)
    reuse = base_folder = None
    if base is not None:
        base_folder = BaseFolder(base, checkpoint_sha256=new.checkpoint_sha256, dim=new.dim)
        if not base_folder.has_hashes:
            log.warning("%s records no image hashes (written before they were kept): every product is embedded "
                        "again", base)
        hashes = hash_images(table.column("image_path").to_pylist(), progress=progress)
        reuse_from = reusable_rows(table, hashes, base_folder)
        reuse = reuse_loader(base_folder, reuse_from, hashes, size)
        rows = rows[reuse_from[rows] < 0]
    shard_rows = dict.fromkeys(pending, 0) if base is not None else {}
    for k, count in zip(*np.unique(rows // size, return_counts=True), strict=True):
        shard_rows[int(k)] = int(count)
    job = EmbedJob(table, rows, ckpt, checkpoint, new.image_size, device, config, backbone=backbone,
                   traced=graph.traced)
    processed = _run(job, out_dir, new, shard_rows, reuse=reuse, progress=progress)
    merge_rejects(out_dir, new)
    if base_folder is not None:
        _record_delta(out_dir, new, base_folder, base, reembedded=processed)
    new.complete = True
    write_manifest(out_dir, new)
    return processed


def _summary(out_dir: Path, manifest: EmbeddingsManifest, *, seconds: float, processed: int,
             compute_seconds: float, resumed: int, noop: bool, device: str, engine: str,
             compile_seconds: float | None = None, graph: GraphChoice | None = None,
             trace_seconds: float | None = None) -> dict:
    return {
        "out_dir": str(out_dir),
        "embedded": manifest.embedded,
        "rejected": manifest.rejected,
        "n_input": manifest.n_input,
        "shards": len(manifest.shards),
        "resumed_shards": resumed,
        "processed": processed,            # images decoded in this run (embedded + rejected)
        "seconds": seconds,                # the whole call
        "images_per_s": processed / compute_seconds if compute_seconds > 0 else 0.0,
        "rejects": str(out_dir / REJECTS),
        "complete": manifest.complete,
        "noop": noop,
        "device": device,
        "engine": engine,
        "decode": manifest.decode,
        "jpeg_draft": manifest.jpeg_draft,
        "compile_seconds": compile_seconds,  # torch.compile and its warm-up batch, outside images_per_s
        "graph": None if graph is None else graph.name,          # the backbone's forward: "traced" or "eager"
        "graph_reason": None if graph is None else graph.reason,
        "trace_seconds": trace_seconds,      # tracing and two warm-up batches (local engine), outside images_per_s
        "incremental": None if manifest.incremental is None else dataclasses.asdict(manifest.incremental),
        "checkpoint_sha256": manifest.checkpoint_sha256,
    }


def _folder_fingerprint(manifest: Manifest) -> str:
    """What identifies a finished embeddings folder: its catalogue fingerprint, else its shard list."""
    return manifest.catalog_fingerprint or hashlib.sha256(json.dumps(
        [manifest.checkpoint_sha256, manifest.shards]).encode()).hexdigest()


def _record_delta(out_dir: Path, manifest: EmbeddingsManifest, base_folder: BaseFolder, base: Path, *,
                  reembedded: int) -> None:
    """Compare the finished shards with the base folder; write _delta.parquet and the counts into the manifest."""
    extras = tuple(c for c in manifest.columns if c not in (*BASE_COLUMNS, IMAGE_HASH, EMBEDDING))
    shards = tuple((s.name, s.rows) for s in manifest.shards)
    finished = Manifest(out_dir, manifest.checkpoint_sha256, manifest.backbone, manifest.dim, shards, extras)
    new_rows = read_metadata(finished, [*BASE_COLUMNS, *extras, IMAGE_HASH]) if finished.n else None
    if new_rows is None:
        ids, kinds = base_folder.table.column("product_id").to_pylist(), ["removed"] * len(base_folder.table)
    else:
        ids, kinds = delta(base_folder.table, new_rows)
    write_delta(out_dir, ids, kinds)
    manifest.incremental = IncrementalRecord(str(base.resolve()), manifest.base_fingerprint, reembedded,
                                             **{kind: kinds.count(kind) for kind in CHANGES})


def _run(job: EmbedJob, out_dir: Path, manifest: EmbeddingsManifest, shard_rows: dict[int, int], *, reuse,
         progress: bool) -> int:
    """Run the engine over the job's rows into the shard writer; returns how many images were processed."""
    if not shard_rows:
        return 0
    writer = ShardWriter(out_dir, job.table, manifest, shard_rows, job.checkpoint.embedder.dim, reuse=reuse)
    batches = RUNNERS[job.config.engine](job) if len(job.rows) else iter(())
    writer.start()                     # after the engine's set-up: DataLoader workers fork before any thread
    bar = progress_bar(total=manifest.n_input, initial=manifest.n_input - len(job.rows), unit="img",
                       desc=f"embed-catalog ({job.config.engine})", disable=not progress, smoothing=0.1)
    try:
        for batch in batches:
            writer.put(*batch)
            bar.update(len(batch.rows) + len(batch.rejects))
        writer.finish()
    finally:
        bar.close()
        writer.abandon()               # a no-op after finish(); after a failure, stops without finishing shards
        close = getattr(batches, "close", None)
        if close is not None:
            close()                    # the engine's clean-up: worker processes, the Ray instance it started
    return len(job.rows)


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
              help="local: Pillow decode processes [CPU: 1 per 8 cores, at least 1; CUDA: cores - 2; 0: decode in "
                   "this process], or with --decode gpu the reader threads [one per core]. "
                   "ray: embedding actors [one per GPU with --num-gpus-per-worker, else one].")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="local: this process and its decode workers; ray: Ray Data (pip install '.[ray]').")
@click.option("--address", "ray_address", default=None,
              help="ray: the cluster to join (e.g. ray://head:10001 or auto) [RAY_ADDRESS, else a local instance].")
@click.option("--num-gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="ray: GPUs each embedding actor holds (fractions share a GPU).")
@click.option("--decode", type=click.Choice(DECODES), default="auto", show_default=True,
              help="local: cpu (Pillow in worker processes), gpu (JPEG batches decoded on the device, the rest on "
                   "CPU threads) or both at once, each batch to the side that keeps up; auto is both on CUDA, "
                   "else cpu.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the backbone for one static batch shape (compile time reported apart from the "
                   "steady-state rate).")
@click.option("--trace/--no-trace", default=None,
              help="Run the backbone as a frozen TorchScript graph (CPU). Default: traced on a CPU from "
                   f"{TRACE_MIN_IMAGES} images to embed (measured 1.1-1.5x the eager job's rate on 2 cores), "
                   "else eager.")
@click.option("--jpeg-draft", is_flag=True,
              help="Decode JPEGs of 900 px and more at a reduced scale (DCT scaling, never below twice the input "
                   "size) on the Pillow path: about 2x faster there, embeddings off by up to 0.003 in cosine.")
@click.option("--incremental", is_flag=True,
              help="Embed only products that are new or whose image changed since --base; copy the rest.")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="With --incremental: the complete embeddings folder of the previous run.")
@click.option("--overwrite", is_flag=True, help="Replace output made with another checkpoint or catalogue.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Embed only the first N rows (quick runs).")
@click.option("--image-size", type=click.IntRange(min=8), default=None, hidden=True,
              help="Resize to this size instead of the backbone's input size (tests only).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed_catalog_command(manifest, checkpoint, out_dir, shard_size, batch_size, workers, device, engine, ray_address,
                          num_gpus_per_worker, decode, compile_, trace, jpeg_draft, incremental, base, overwrite,
                          limit, image_size, quiet) -> None:
    """Embed the catalogue's product images into parquet shards (resumable; bad images go to rejects.jsonl)."""
    if incremental != (base is not None):
        raise click.UsageError("--incremental needs --base DIR (the previous run's folder), and --base needs "
                               "--incremental")
    config = EmbedCatalogConfig(shard_size=shard_size, batch_size=batch_size, workers=workers, device=device,
                                limit=limit, image_size=image_size, engine=engine, ray_address=ray_address,
                                num_gpus_per_worker=num_gpus_per_worker, decode=decode, compile=compile_,
                                trace=trace, jpeg_draft=jpeg_draft)
    s = embed_catalog(manifest, checkpoint, out_dir, config=config, overwrite=overwrite, progress=not quiet,
                      base=base)
    plural = "s" if s["shards"] != 1 else ""
    if s["noop"]:
        click.echo(f"{s['out_dir']} is already complete: embedded {s['embedded']}, rejected {s['rejected']}, "
                   f"{s['shards']} shard{plural} (nothing to do)")
        return
    resumed = f", {s['resumed_shards']} resumed" if s["resumed_shards"] else ""
    click.echo(f"embedded {s['embedded']}, rejected {s['rejected']} (see {s['rejects']}), "
               f"{s['shards']} shard{plural}{resumed} in {s['out_dir']}; {s['seconds']:.1f} s, "
               f"{s['images_per_s']:.1f} img/s on {s['device']} ({s['engine']} engine, {s['decode']} decoding)"
               + (f"; compile and warm-up {s['compile_seconds']:.1f} s" if s["compile_seconds"] else "")
               + (f"; traced backbone (trace and warm-up {s['trace_seconds']:.1f} s)" if s["trace_seconds"] else ""))
    if s["incremental"]:
        inc = s["incremental"]
        click.echo(f"incremental against {inc['base']}: {inc['reembedded']} images embedded, added {inc['added']}, "
                   f"changed {inc['changed']}, removed {inc['removed']} (see _delta.parquet; apply with "
                   "`ctl update-index`)")


if __name__ == "__main__":  # python -m jobs.catalog.embed_catalog ...
    embed_catalog_command()
