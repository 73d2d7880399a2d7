"""The Ray Data embed-catalog engine: decode tasks, then an actor pool holding the model; batches come back here.

    rows to embed (row, image_path) -> map_batches(decode, tasks) -> map_batches(ProductEmbedder, actor pool
    of --workers, --num-gpus-per-worker each) -> iter_batches in this process -> the job's shard writer

A bad image is one rejected row (decode catches per row and emits a reason column), never a failed
block. Shards are written by the job's writer in this process, so the output folder, its atomic
writes and resume by shard are the local engine's. Workers only need to read the images: local paths
they all see (a shared file system) or URIs that pyarrow's filesystems read (s3://, gs://, hdfs://).
Ray is an optional extra (`pip install '.[ray]'`), imported only when this engine runs.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from common.ray_cluster import connect, import_ray
from jobs.catalog.catalog_images import decode_row
from jobs.catalog.embed_job import Embedded, EmbedJob, forward
from jobs.workers import lower_priority
from pipeline.backbones import traced_backbone
from pipeline.checkpoint import load_checkpoint

# rows per input block: one batch on small runs (an actor's output reaches the writer a batch at a time; with
# 256-row blocks the first rows of a 640-image run came back after 40% of it), up to 1024 on large ones
# (fewer, larger blocks: 10M rows are ~10k blocks)
MAX_BLOCK_ROWS = 1024
DECODE_CPUS = 0.5                # per decode task (a logical share: see open_engine)


_niced = False


def _decode(batch: dict, *, size: int, nice: bool, draft: bool = False) -> dict:
    """Decode one block of rows; a bad image is a row with a reason, never an exception."""
    global _niced
    if nice and not _niced:          # on CPU, decoding yields to the embedding actor's threads (as locally)
        lower_priority(0)
        _niced = True
    n = len(batch["row"])
    images = np.zeros((n, 3, size, size), np.uint8)
    reasons, hashes = [""] * n, [""] * n
    for i, path in enumerate(batch["image_path"]):
        image, reason, sha = decode_row(str(path), size, draft=draft)
        if image is None:
            reasons[i] = reason
        else:
            images[i], hashes[i] = image.numpy(), sha
    return {"row": batch["row"], "image": images, "reason": np.array(reasons, dtype=object),
            "sha": np.array(hashes, dtype=object)}


class ProductEmbedder:
    """Ray Data callable class: one per actor, holding the checkpoint's model."""

    def __init__(self, checkpoint, *, gpus: float, threads: int | None, trace: bool = False, size: int = 224):
        ray = import_ray()
        payload = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
        self.device = torch.device("cuda" if gpus > 0 else "cpu")
        if threads:
            torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory(prefix="ctl-ckpt-") as tmp:   # the checkpoint travels as bytes
            path = Path(tmp) / "checkpoint.pt"
            path.write_bytes(payload)
            self.embedder = load_checkpoint(path, device=self.device).embedder.eval()
        self.embedder.to(memory_format=torch.channels_last)
        # each actor its own graph (the job's choice, jobs.backbone_graph): a traced graph is not sent to actors
        self.backbone = traced_backbone(self.embedder.backbone, size=size, device=self.device) if trace else None

    def __call__(self, batch: dict) -> dict:
        ok = np.asarray(batch["reason"] == "", dtype=bool)
        emb = np.zeros((len(ok), self.embedder.dim), np.float32)
        if ok.any():
            with torch.inference_mode():
                images = torch.from_numpy(batch["image"][ok])
                emb[ok] = forward(self.embedder, images, self.device, backbone=self.backbone).float().cpu().numpy()
        return {"row": batch["row"], "embedding": emb, "reason": batch["reason"], "sha": batch["sha"]}


def open_engine(job: EmbedJob) -> Iterator[Embedded]:
    """Connect to Ray and lay out the dataset; the returned generator streams its batches (and shuts down
    the local instance it started when closed)."""
    ray = import_ray()
    config = job.config
    started = connect(config.ray_address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False       # the job's own bar counts rows
        gpus = float(config.num_gpus_per_worker)
        workers = config.workers or (max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)) if gpus else 1)
        batch_size = config.batch_size or (256 if gpus else 32)
        local = not (config.ray_address or os.environ.get("RAY_ADDRESS"))
        # a local CPU actor uses this machine's cores (as the local engine does); on a cluster, what Ray assigns
        threads = max(1, (os.cpu_count() or 1) // workers) if local and not gpus else None
        paths = job.table.column("image_path").take(pa.array(job.rows)).combine_chunks()
        rows = pa.table({"row": pa.array(job.rows, pa.int64()), "image_path": paths})
        block_rows = max(batch_size, min(MAX_BLOCK_ROWS, len(rows) // 256))
        blocks = [rows.slice(i, block_rows) for i in range(0, len(rows), block_rows)]
        ds = ray.data.from_arrow(blocks)
        # num_cpus unlike the actors' so Ray Data does not fuse decoding into them: fused, an actor decodes
        # and embeds in turn and the network waits for every decode
        ds = ds.map_batches(_decode, fn_kwargs={"size": job.size, "nice": not gpus, "draft": job.config.jpeg_draft},
                            batch_size=batch_size, batch_format="numpy", num_cpus=DECODE_CPUS)
        # the actors must leave CPU for the decode tasks, or the pipeline waits forever for a free CPU: on the
        # smallest node, as Ray may place them all there (two 1-CPU nodes and 2 actors of 0.75 CPU hung)
        node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
        actor_cpus = max(0.05, min(1.0, (min(node_cpus, default=1) - DECODE_CPUS) / workers))
        ds = ds.map_batches(ProductEmbedder, fn_constructor_args=(ray.put(Path(job.checkpoint_path).read_bytes()),),
                            fn_constructor_kwargs={"gpus": gpus, "threads": threads, "trace": job.traced,
                                                   "size": job.size}, batch_size=batch_size,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                            num_gpus=gpus or None, num_cpus=round(actor_cpus, 2))
    except BaseException:
        if started:
            ray.shutdown()
        raise
    return _stream(ray, ds, started)


def _stream(ray, ds, started: bool) -> Iterator[Embedded]:
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ok = np.asarray(batch["reason"] == "", dtype=bool)
            rows = batch["row"].astype(np.int64)
            rejects = [(int(r), str(reason)) for r, reason in zip(rows[~ok], batch["reason"][~ok], strict=True)]
            yield Embedded(rows[ok].tolist(), batch["embedding"][ok] if ok.any() else None, None, rejects,
                           [str(h) for h in batch["sha"][ok]])
    finally:
        if started:
            with contextlib.suppress(Exception):
                ray.shutdown()
