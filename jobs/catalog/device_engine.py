"""The device-decoding embed-catalog engine: threads read bytes, JPEG batches decode and resize on the device.

Per batch: reader threads (started one batch ahead, so reading overlaps the device) return the files'
bytes; the JPEGs the device decoder takes go to it in one call on a side CUDA stream, with the
resize, while the previous batch's network runs on the main stream; the rest (see
:mod:`jobs.catalog.device_decode`) are decoded by Pillow in the same threads, copied from pinned
memory, and every image lands in its row's place. A bad image is one reject with its reason, as on
the CPU path. On a CPU device the same path runs with torchvision's CPU decoder: a test of the path,
not a speed-up.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import torch

from common import defaults
from jobs.catalog.device_decode import (
    RawImage,
    decode_on_cpu,
    decode_on_device,
    device_decodable,
    read_raw,
    resize_on_device,
)
from jobs.catalog.embed_job import Embedded, EmbedJob, forward_to_host

# Reader threads per core: reading is I/O and hashing (hashlib releases the GIL); fallback decodes are
# Pillow, which releases it too.
MAX_READERS = 32


@dataclass
class Prepared:
    """One batch on the device, ready for the network once `ready` has fired."""

    rows: list[int]
    images: torch.Tensor | None      # uint8 N x 3 x S x S on the device, rows in `rows` order
    rejects: list[tuple[int, str]]
    hashes: list[str]
    ready: object | None             # a CUDA event recorded on the side stream, or None on the CPU
    fallbacks: int                   # images the CPU decoder took


def reader_threads(config_workers: int | None) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return config_workers or min(MAX_READERS, max(2, cpus))


def prepare(raws: list[RawImage], size: int, device: torch.device, pool: ThreadPoolExecutor,
            stream: "torch.cuda.Stream | None" = None) -> Prepared:
    """Decode and resize one batch of raw files onto `device`: the device decoder where it can, Pillow elsewhere."""
    rejects = [(r.row, r.reason) for r in raws if r.data is None]
    readable = [r for r in raws if r.data is not None]
    to_device = [r for r in readable if device_decodable(r.data) is None]
    context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with context:
        decoded = decode_on_device([r.data for r in to_device], device)
    by_device = {r.row: img for r, img in zip(to_device, decoded) if img is not None}
    on_cpu = [r for r in readable if r.row not in by_device]     # not JPEG-as-is, or refused by the decoder
    cpu_results = list(pool.map(lambda r: decode_on_cpu(r, size), on_cpu))
    by_cpu = {}
    for raw, (tensor, reason) in zip(on_cpu, cpu_results):
        if tensor is None:
            rejects.append((raw.row, reason))
        else:
            by_cpu[raw.row] = tensor
    good = [r for r in readable if r.row in by_device or r.row in by_cpu]
    if not good:
        return Prepared([], None, sorted(rejects), [], None, len(on_cpu))
    with context:
        images = torch.empty((len(good), 3, size, size), dtype=torch.uint8, device=device)
        device_pos = [i for i, r in enumerate(good) if r.row in by_device]
        if device_pos:
            images[device_pos] = resize_on_device([by_device[good[i].row] for i in device_pos], size)
        cpu_pos = [i for i, r in enumerate(good) if r.row in by_cpu]
        if cpu_pos:
            host = torch.stack([by_cpu[good[i].row] for i in cpu_pos])
            if device.type == "cuda":
                host = host.pin_memory()
            images[cpu_pos] = host.to(device, non_blocking=True)
        ready = None
        if stream is not None:
            ready = torch.cuda.Event()
            ready.record(stream)
    return Prepared([r.row for r in good], images, sorted(rejects), [r.sha256 for r in good], ready, len(on_cpu))


def open_engine(job: EmbedJob) -> Iterator[Embedded]:
    """Start the reader threads; return the batches (the threads stop when the iterator is closed)."""
    pool = ThreadPoolExecutor(max_workers=reader_threads(job.config.workers), thread_name_prefix="embed-read")
    return _embed(job, pool)


def _embed(job: EmbedJob, pool: ThreadPoolExecutor) -> Iterator[Embedded]:
    cuda = job.device.type == "cuda"
    batch_size = job.config.batch_size or (defaults.BATCH_SIZE_GPU if cuda else defaults.BATCH_SIZE_CPU)
    paths = job.paths
    batches = [job.rows[i:i + batch_size] for i in range(0, len(job.rows), batch_size)]
    stream = torch.cuda.Stream(device=job.device) if cuda else None
    embedder = job.checkpoint.embedder.eval().to(memory_format=torch.channels_last)

    def read(rows) -> list[Future]:
        return [pool.submit(read_raw, int(row), paths[int(row)]) for row in rows]

    try:
        with torch.inference_mode():
            pending = read(batches[0]) if batches else []
            nxt = prepare([f.result() for f in pending], job.size, job.device, pool, stream) if batches else None
            for b in range(len(batches)):
                current = nxt
                pending = read(batches[b + 1]) if b + 1 < len(batches) else []
                embeddings, ready = None, None
                if current.images is not None:
                    if current.ready is not None:
                        torch.cuda.current_stream(job.device).wait_event(current.ready)
                        current.images.record_stream(torch.cuda.current_stream(job.device))
                    embeddings, ready = forward_to_host(embedder, current.images, job.device)
                # The next batch's decode is queued on the side stream while this batch's network runs.
                nxt = prepare([f.result() for f in pending], job.size, job.device, pool, stream) if pending else None
                yield Embedded(current.rows, embeddings, ready, current.rejects, current.hashes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
