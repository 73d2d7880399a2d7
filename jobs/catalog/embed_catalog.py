"""`ctl embed-catalog`: catalogue images -> product embeddings in resumable parquet shards.

The job is reader -> embedder -> writer:

- reader: a torch ``Dataset`` over the pending manifest rows; DataLoader workers decode (``load_image``)
  and resize (``image_to_tensor``) each image. A bad image never raises: it comes back as a reject
  with its reason, and the collate function passes the reasons on beside the batch.
- embedder: the checkpoint's ``StyleEmbedder`` in eval mode under ``torch.inference_mode``,
  channels_last; on CUDA the backbone runs under bf16 autocast (the heads stay fp32), with pinned
  memory and non-blocking copies.
- writer: a background thread fed by a bounded queue of finished batches. It assembles each shard
  once all its rows are in, writes it atomically, then rewrites ``_manifest.json`` atomically, so
  writing overlaps compute.

Output folder (the contract read by ``ctl build-index``)::

    part-00000.parquet ...   product_id, category, image_path (resolved), the manifest's other
                             columns as strings, embedding: fixed_size_list<float32>[d] (unit rows).
                             Shard k holds manifest rows [k*S, (k+1)*S) minus rejects, in order.
    _manifest.json           checkpoint_sha256, backbone, dim, image_size, catalog, catalog_sha256
                             (the file's bytes), catalog_fingerprint (the rows used), n_input,
                             shard_size, n_shards, shards [{name, index, rows, rejected}], complete.
    _rejects/part-00000.jsonl  the rejects of one finished shard (only where it has any); kept with
                             the shard so that a resumed run neither loses nor repeats them.
    rejects.jsonl            {"product_id", "image_path", "reason"} per line: every shard's rejects
                             in manifest order, written when the job completes (empty if none).

Resume: a shard counts as finished only once the manifest lists it, and the manifest is rewritten
after the shard's files are in place, so a run killed at any point and started again redoes at most
the shards it was working on (overwriting them atomically) and leaves no duplicates or gaps. A
rerun over a complete output is a no-op. Output made with another checkpoint, catalogue, --limit,
shard size or image size is refused unless --overwrite.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import click

from common import defaults
from common.errors import ArtifactError
from common.files import atomic_path, sha256_of, write_text_atomic
from jobs.workers import default_workers, lower_priority

FORMAT = "complete-the-look/embeddings-v1"
MANIFEST = "_manifest.json"
REJECTS = "rejects.jsonl"
REJECTS_DIR = "_rejects"
LOCK = ".lock"
SHARD_GLOB = "part-*.parquet"
BASE_COLUMNS = ("product_id", "category", "image_path")


class EmbedCatalogError(ArtifactError):
    """A user error (bad input, refused output folder); the message is one readable line."""


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


# ---------------------------------------------------------------------------------------------
# Reader

def _short_reason(path: str, message: str) -> str:
    """ImageError messages start with the path, which the reject line carries already."""
    for prefix in (f"{path}: ", f"{Path(path)}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


class CatalogImages:
    """Map-style dataset over manifest rows: index -> (row, uint8 3 x size x size tensor | None, reason | None)."""

    def __init__(self, paths: Sequence[str], rows: Sequence[int], size: int):
        self.paths = paths
        self.rows = rows
        self.size = size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from pipeline.images import ImageError, image_to_tensor, load_image

        row = int(self.rows[i])
        path = self.paths[row]
        try:
            return row, image_to_tensor(load_image(path), self.size), None
        except ImageError as exc:
            return row, None, _short_reason(path, str(exc))
        except Exception as exc:  # noqa: BLE001 - one odd file must never stop the job
            return row, None, f"cannot decode ({type(exc).__name__}: {exc})"


@dataclass
class Batch:
    rows: list[int]                 # manifest rows of `images`, in order
    images: "torch.Tensor | None"   # uint8 N x 3 x H x W, or None when every image was rejected
    rejects: list[tuple[int, str]]  # (manifest row, reason)

    def pin_memory(self):           # called by the DataLoader's pinning thread when pin_memory=True
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate(items) -> Batch:
    import torch

    good = [(row, img) for row, img, _ in items if img is not None]
    rejects = [(row, reason) for row, img, reason in items if img is None]
    images = torch.stack([img for _, img in good]) if good else None
    return Batch([row for row, _ in good], images, rejects)


# ---------------------------------------------------------------------------------------------
# Writer

def _string_column(col):
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(col.type):
        return col
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else json.dumps(v, sort_keys=True, default=str) for v in col.to_pylist()],
                        pa.string())


class ShardWriter(threading.Thread):
    """Collects embedded batches, writes each shard once complete, then records it in the manifest."""

    def __init__(self, out_dir: Path, table, manifest: dict, shard_rows: dict[int, int], dim: int):
        super().__init__(name="embed-catalog-writer", daemon=True)
        self.out_dir = out_dir
        self.table = table            # the catalogue: product_id, category, image_path, extras (strings)
        self.manifest = manifest
        self.shard_size = manifest["shard_size"]
        self.remaining = dict(shard_rows)   # shard -> rows still to come
        self.dim = dim
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.written = 0
        self._parts: dict[int, list] = {k: [] for k in shard_rows}      # (rows, embeddings) pieces
        self._rejects: dict[int, list] = {k: [] for k in shard_rows}

    # main thread side
    def put(self, rows, embeddings, ready, rejects) -> None:
        while True:
            self.check()
            try:
                self.queue.put((rows, embeddings, ready, rejects), timeout=0.5)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        self.check()
        if any(self.remaining.values()):
            raise RuntimeError(f"embed-catalog: rows missing from shards {[k for k, n in self.remaining.items() if n]}")

    # writer thread side
    def run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                self._take(*item)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
            while self.queue.get() is not None:   # keep draining so the main thread never blocks
                pass

    def _take(self, rows, embeddings, ready, rejects) -> None:
        import numpy as np

        if ready is not None:
            ready.synchronize()       # the device -> host copy of `embeddings` has landed
        rows = np.asarray(rows, dtype=np.int64)
        embeddings = embeddings.numpy() if embeddings is not None else np.zeros((0, self.dim), np.float32)
        counts: dict[int, int] = {}
        for row, reason in rejects:
            k = row // self.shard_size
            self._rejects[k].append((row, reason))
            counts[k] = counts.get(k, 0) + 1
        shards = rows // self.shard_size
        for k in np.unique(shards).tolist():
            sel = shards == k
            self._parts[k].append((rows[sel], embeddings[sel]))
            counts[k] = counts.get(k, 0) + int(sel.sum())
        for k in sorted(counts):
            self.remaining[k] -= counts[k]
            if self.remaining[k] < 0:
                raise RuntimeError(f"shard {k} received more rows than it holds")
            if self.remaining[k] == 0:
                self._write_shard(k)

    def _write_shard(self, k: int) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self._parts.pop(k)
        rejects = sorted(self._rejects.pop(k))
        rows = np.concatenate([r for r, _ in parts]) if parts else np.zeros(0, np.int64)
        emb = np.concatenate([e for _, e in parts]) if parts else np.zeros((0, self.dim), np.float32)
        order = np.argsort(rows, kind="stable")
        rows, emb = rows[order], np.ascontiguousarray(emb[order], dtype=np.float32)
        shard = self.table.take(pa.array(rows, pa.int64()))
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), self.dim)
        shard = shard.append_column(pa.field("embedding", embedding.type), embedding)
        shard = shard.replace_schema_metadata({
            "checkpoint_sha256": self.manifest["checkpoint_sha256"], "format": FORMAT, "shard": str(k)})
        name = shard_name(k)
        with atomic_path(self.out_dir / name) as tmp:
            pq.write_table(shard, tmp)
        reject_file = self.out_dir / REJECTS_DIR / f"part-{k:05d}.jsonl"
        if rejects:
            pid, path = self.table.column("product_id"), self.table.column("image_path")
            write_text_atomic(reject_file, "".join(
                json.dumps({"product_id": pid[r].as_py(), "image_path": path[r].as_py(), "reason": reason}) + "\n"
                for r, reason in rejects))
        elif reject_file.exists():
            reject_file.unlink()      # left by an earlier, killed attempt at this shard
        entry = {"name": name, "index": k, "rows": int(len(rows)), "rejected": len(rejects)}
        shards = [s for s in self.manifest["shards"] if s["index"] != k] + [entry]
        self.manifest["shards"] = sorted(shards, key=lambda s: s["index"])
        _write_manifest(self.out_dir, self.manifest)
        self.written += 1


# ---------------------------------------------------------------------------------------------
# Output folder: manifest, fingerprints, refusal rules

def _write_manifest(out_dir: Path, manifest: dict) -> None:
    manifest["embedded"] = sum(s["rows"] for s in manifest["shards"])
    manifest["rejected"] = sum(s["rejected"] for s in manifest["shards"])
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise EmbedCatalogError(f"{path} is not valid JSON ({exc}); use --overwrite to start over") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EmbedCatalogError(f"{path} is not an embed-catalog manifest; use --overwrite to start over")
    return manifest


def catalog_fingerprint(table) -> str:
    """sha256 over the rows the job embeds (every column, as strings): a rewritten file with the same
    rows keeps it, a changed or reordered row, or another --limit, changes it."""
    digest = hashlib.sha256()
    for name in table.column_names:
        digest.update(json.dumps([name, table.column(name).to_pylist()]).encode())
    return digest.hexdigest()


def _clear_output(out_dir: Path) -> None:
    """Remove what embed-catalog writes in out_dir (and nothing else)."""
    for path in list(out_dir.glob(SHARD_GLOB)) + [out_dir / MANIFEST, out_dir / REJECTS]:
        if path.exists():
            path.unlink()
    shutil.rmtree(out_dir / REJECTS_DIR, ignore_errors=True)


def _clear_temp_files(out_dir: Path) -> None:
    """Temp files of atomic writes cut short by a kill (no other run can be writing: we hold the lock)."""
    for folder in (out_dir, out_dir / REJECTS_DIR):
        for tmp in folder.glob(".*.tmp"):
            if tmp.name.startswith((".part-", f".{MANIFEST}.", f".{REJECTS}.")):
                tmp.unlink(missing_ok=True)


def _refusal(old: dict, new: dict) -> str | None:
    if old.get("checkpoint_sha256") != new["checkpoint_sha256"]:
        return (f"made with a different checkpoint (sha256 {str(old.get('checkpoint_sha256'))[:12]}..., "
                f"this one is {new['checkpoint_sha256'][:12]}...)")
    if old.get("catalog_fingerprint") != new["catalog_fingerprint"]:
        if old.get("catalog") == new["catalog"] and old.get("n_input") != new["n_input"]:
            return f"made from {old.get('n_input')} rows of this catalogue, this run would embed {new['n_input']} (--limit)"
        return f"made from a different catalogue ({old.get('catalog')}, {old.get('n_input')} rows)"
    for key, flag in (("shard_size", "--shard-size"), ("image_size", "image size")):
        if old.get(key) != new[key]:
            return f"written with {flag} {old.get(key)}, this run uses {new[key]}"
    return None


@contextlib.contextmanager
def _locked(out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbedCatalogError(f"another embed-catalog run is writing to {out_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# The job

def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EmbedCatalogError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise EmbedCatalogError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def _load_catalog(manifest: Path, limit: int | None):
    import pyarrow as pa

    from jobs.data.datasets import read_catalog

    try:
        table = read_catalog(manifest)
    except ValueError as exc:
        raise EmbedCatalogError(str(exc)) from None
    if limit is not None:
        if limit < 1:
            raise EmbedCatalogError(f"--limit must be at least 1, got {limit}")
        table = table.slice(0, limit)
    if "embedding" in table.column_names:
        raise EmbedCatalogError(f"{manifest}: column 'embedding' clashes with the output column; rename it")
    extras = [c for c in table.column_names if c not in BASE_COLUMNS]
    columns = {c: _string_column(table.column(c)) for c in (*BASE_COLUMNS, *extras)}
    return pa.table(columns).combine_chunks()


def _load_model(checkpoint: Path, device):
    from pipeline.checkpoint import CheckpointError, load_checkpoint

    if not checkpoint.is_file():
        raise EmbedCatalogError(f"no checkpoint at {checkpoint}; run `make train` first (or pass --checkpoint)")
    try:
        return load_checkpoint(checkpoint, device=device)
    except CheckpointError as exc:
        raise EmbedCatalogError(str(exc)) from None


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


def embed_catalog(
    manifest: str | os.PathLike = defaults.CATALOG,
    checkpoint: str | os.PathLike = defaults.CHECKPOINT,
    out_dir: str | os.PathLike = defaults.EMBEDDINGS_DIR,
    *,
    shard_size: int = defaults.SHARD_SIZE,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    image_size: int | None = None,
) -> dict:
    """Embed a catalogue's product images into parquet shards in out_dir (see the module docstring).

    batch_size None: 32 on CPU, 256 on CUDA. workers None: :func:`default_workers`. image_size None:
    the backbone's input size (smaller sizes are for tests). Returns a summary dict (embedded,
    rejected, shards, seconds, images_per_s, ...). Raises EmbedCatalogError for user errors.
    """
    start = time.perf_counter()
    if shard_size < 1:
        raise EmbedCatalogError(f"--shard-size must be at least 1, got {shard_size}")
    if batch_size is not None and batch_size < 1:
        raise EmbedCatalogError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise EmbedCatalogError(f"--workers must be 0 or more, got {workers}")
    manifest, checkpoint, out_dir = Path(manifest), Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise EmbedCatalogError(f"no checkpoint at {checkpoint}; run `make train` first (or pass --checkpoint)")
    if out_dir.exists() and not out_dir.is_dir():
        raise EmbedCatalogError(f"--out {out_dir} is a file, not a folder")
    table = _load_catalog(manifest, limit)
    n_input = len(table)
    catalog_file = manifest / "catalog.parquet" if manifest.is_dir() else manifest
    torch_device = _resolve_device(device)

    identity = {
        "checkpoint_sha256": sha256_of(checkpoint),
        "catalog": str(catalog_file.resolve()),
        "catalog_fingerprint": catalog_fingerprint(table),
        "n_input": n_input,
        "shard_size": shard_size,
    }
    with _locked(out_dir):
        old = read_manifest(out_dir) if not overwrite else None
        if old is None and not overwrite and (any(out_dir.glob(SHARD_GLOB)) or (out_dir / REJECTS_DIR).exists()):
            raise EmbedCatalogError(f"{out_dir} holds shards without a {MANIFEST}; use --overwrite to replace them")
        if old is not None:   # refuse (or finish as a no-op) before paying for the model
            reason = _refusal(old, {**identity, "image_size": old.get("image_size")})
            if reason is not None:
                raise EmbedCatalogError(f"{out_dir} was {reason}; use another --out or --overwrite")
            if (old.get("complete") and image_size in (None, old.get("image_size"))
                    and all((out_dir / s["name"]).exists() for s in old["shards"])):
                return _summary(out_dir, old, seconds=time.perf_counter() - start, processed=0, compute_seconds=0,
                                resumed=len(old["shards"]), noop=True, device=str(torch_device))

        ckpt = _load_model(checkpoint, torch_device)
        embedder = ckpt.embedder
        size = image_size or embedder.backbone.input_size
        new = {
            "format": FORMAT,
            **identity,
            "catalog_sha256": sha256_of(catalog_file),
            "checkpoint": str(checkpoint.resolve()),
            "backbone": embedder.backbone_name,
            "dim": embedder.dim,
            "image_size": size,
            "limit": limit,
            "n_shards": math.ceil(n_input / shard_size),
            "columns": [*table.column_names, "embedding"],
            "rejects": REJECTS,
            "complete": False,
            "shards": [],
        }
        if old is not None:
            reason = _refusal(old, new)
            if reason is not None:
                raise EmbedCatalogError(f"{out_dir} was {reason}; use another --out or --overwrite")
        if overwrite:
            _clear_output(out_dir)
        _clear_temp_files(out_dir)
        done = {s["index"]: s for s in (old or {}).get("shards", []) if (out_dir / s["name"]).exists()}
        new["shards"] = [done[k] for k in sorted(done)]
        _write_manifest(out_dir, new)

        pending = [k for k in range(new["n_shards"]) if k not in done]
        shard_rows = {k: min((k + 1) * shard_size, n_input) - k * shard_size for k in pending}
        t0 = time.perf_counter()
        processed = _run(table, embedder, out_dir, new, pending, shard_rows, size=size, device=torch_device,
                         batch_size=batch_size, workers=workers, progress=progress)
        compute_seconds = time.perf_counter() - t0

        _merge_rejects(out_dir, new)
        new["complete"] = True
        _write_manifest(out_dir, new)
    return _summary(out_dir, new, seconds=time.perf_counter() - start, processed=processed,
                    compute_seconds=compute_seconds, resumed=len(done), noop=False, device=str(torch_device))


def _merge_rejects(out_dir: Path, manifest: dict) -> None:
    with atomic_path(out_dir / REJECTS) as tmp, open(tmp, "wb") as dst:
        for s in manifest["shards"]:
            part = out_dir / REJECTS_DIR / f"part-{s['index']:05d}.jsonl"
            if s["rejected"]:
                dst.write(part.read_bytes())


def _run(table, embedder, out_dir: Path, manifest: dict, pending: list[int], shard_rows: dict[int, int], *,
         size: int, device, batch_size: int | None, workers: int | None, progress: bool) -> int:
    """Embed the rows of the pending shards; returns how many images were processed."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if not pending:
        return 0
    cuda = device.type == "cuda"
    batch_size = batch_size or (256 if cuda else 32)
    workers = default_workers(device.type) if workers is None else workers
    S = manifest["shard_size"]
    rows = np.concatenate([np.arange(k * S, k * S + shard_rows[k]) for k in pending])
    dataset = CatalogImages(table.column("image_path").to_pylist(), rows, size)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
        pin_memory=cuda, prefetch_factor=4 if workers else None, persistent_workers=False,
        worker_init_fn=None if cuda else lower_priority,
    )
    embedder.eval().to(memory_format=torch.channels_last)
    backbone = embedder.backbone
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
                        fmap = backbone(x)
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
        if writer.is_alive():        # the main loop failed: stop the writer without finishing shards
            with contextlib.suppress(queue.Full):
                writer.queue.put(None, timeout=10)
            writer.join(timeout=10)
        del batches
    return len(rows)


# ---------------------------------------------------------------------------------------------
# CLI

@click.command("embed-catalog")
@click.option("--manifest", type=click.Path(path_type=Path), default=defaults.CATALOG, show_default=True,
              help="Catalogue manifest (parquet: product_id, image_path, category, ...) or its folder.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=defaults.CHECKPOINT, show_default=True,
              help="Trained checkpoint (make train).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=defaults.EMBEDDINGS_DIR,
              show_default=True, help="Output folder for part-*.parquet shards.")
@click.option("--shard-size", type=click.IntRange(min=1), default=defaults.SHARD_SIZE, show_default=True,
              help="Manifest rows per shard.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch [32 on CPU, 256 on GPU].")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader decode workers [CPU: 1 per 8 cores, at least 1; GPU: min(4, cores)].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace output made with another checkpoint or catalogue.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Embed only the first N rows (quick runs).")
@click.option("--image-size", type=click.IntRange(min=32), default=None, hidden=True,
              help="Resize to this size instead of the backbone's input size (tests only).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed_catalog_command(manifest, checkpoint, out_dir, shard_size, batch_size, workers, device, overwrite, limit,
                          image_size, quiet) -> None:
    """Embed the catalogue's product images into parquet shards (resumable; bad images go to rejects.jsonl)."""
    try:
        s = embed_catalog(manifest, checkpoint, out_dir, shard_size=shard_size, batch_size=batch_size,
                          workers=workers, device=device, limit=limit, overwrite=overwrite, progress=not quiet,
                          image_size=image_size)
    except EmbedCatalogError as exc:
        raise click.ClickException(str(exc)) from None
    if s["noop"]:
        click.echo(f"{s['out_dir']} is already complete: embedded {s['embedded']}, rejected {s['rejected']}, "
                   f"{s['shards']} shard{'s' if s['shards'] != 1 else ''} (nothing to do)")
        return
    resumed = f", {s['resumed_shards']} resumed" if s["resumed_shards"] else ""
    click.echo(f"embedded {s['embedded']}, rejected {s['rejected']} (see {s['rejects']}), "
               f"{s['shards']} shard{'s' if s['shards'] != 1 else ''}{resumed} in {s['out_dir']}; {s['seconds']:.1f} s, "
               f"{s['images_per_s']:.1f} img/s on {s['device']}")


if __name__ == "__main__":  # python -m jobs.catalog.embed_catalog ...
    embed_catalog_command()
