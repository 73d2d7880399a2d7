"""embed-catalog's device side: threads read bytes, JPEG batches decode and resize on the device (nvJPEG on CUDA).

A side of :mod:`jobs.catalog.decode_merge`: one feeder thread takes a batch, reader threads return
the files' bytes and hashes, the JPEGs the device decoder takes go to it in one call on a side CUDA
stream, with the resize, while the network runs on the main stream; the rest (see
:mod:`jobs.catalog.device_decode`) are decoded by Pillow in the reader threads, copied from pinned
memory, and every image lands in its row's place. A bad image is one reject with its reason, as on
the CPU path. On a CPU device the same path runs with torchvision's CPU decoder: a test of the path,
not a speed-up. `--decode gpu` runs the local engine (:mod:`jobs.catalog.local_engine`) with this side
alone; `--decode auto` on CUDA runs it beside the Pillow processes (:mod:`jobs.catalog.pillow_decoders`).
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from jobs.catalog.decode_merge import Decoded, Merge
from jobs.catalog.device_decode import (
    RawImage,
    decode_on_cpu,
    decode_on_device,
    device_decodable,
    read_raw,
    resize_on_device,
)

SIDE = "device"
# Reader threads per core: reading is I/O and hashing (hashlib releases the GIL); fallback decodes are
# Pillow, which releases it too.
MAX_READERS = 32
AHEAD = 2             # batches decoded on the device and not yet through the network (device memory)
POLL = 0.5


@dataclass
class Prepared:
    """One batch on the device, ready for the network once `ready` has fired."""

    rows: list[int]
    images: torch.Tensor | None      # uint8 N x 3 x S x S on the device, rows in `rows` order
    rejects: list[tuple[int, str]]
    hashes: list[str]
    ready: object | None             # a CUDA event recorded on the side stream, or None on the CPU
    fallbacks: int                   # images the CPU decoder took


def reader_threads(config_workers: int | None, *, cap: int = MAX_READERS) -> int:
    """Reader threads: `--workers` when given, else one per core (at least 2, at most `cap`)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return config_workers or min(cap, max(2, cpus))


def prepare(raws: list[RawImage], size: int, device: torch.device, pool: ThreadPoolExecutor,
            stream: torch.cuda.Stream | None = None, *, draft: bool = False) -> Prepared:
    """Decode and resize one batch of raw files onto `device`: the device decoder where it can, Pillow elsewhere."""
    rejects = [(r.row, r.reason) for r in raws if r.data is None]
    readable = [r for r in raws if r.data is not None]
    to_device = [r for r in readable if device_decodable(r.data) is None]
    context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with context:
        decoded = decode_on_device([r.data for r in to_device], device)
    by_device = {r.row: img for r, img in zip(to_device, decoded, strict=True) if img is not None}
    on_cpu = [r for r in readable if r.row not in by_device]     # not JPEG-as-is, or refused by the decoder
    cpu_results = list(pool.map(lambda r: decode_on_cpu(r, size, draft=draft), on_cpu))
    by_cpu = {}
    for raw, (tensor, reason) in zip(on_cpu, cpu_results, strict=True):
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


class DeviceDecoders:
    """The device side of the merge: a feeder thread and `threads` reader threads."""

    name = SIDE

    def __init__(self, paths: Sequence[str], size: int, device: torch.device, threads: int, *, draft: bool = False):
        self.paths, self.size, self.device, self.draft = paths, size, device, draft
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="embed-read")
        self._room = threading.Semaphore(AHEAD)
        self._thread: threading.Thread | None = None

    def start(self, merge: Merge) -> None:
        self._thread = threading.Thread(target=self._feed, args=(merge,), name="embed-device-feed", daemon=True)
        self._thread.start()

    def _feed(self, merge: Merge) -> None:
        stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        paths = self.paths
        try:
            with torch.inference_mode():
                while not merge.closed:
                    if not self._room.acquire(timeout=POLL):
                        continue
                    task = merge.take(SIDE)
                    if task is None:
                        self._room.release()
                        return
                    raws = list(self.pool.map(lambda row: read_raw(row, paths[row]), task.rows.tolist()))
                    batch = prepare(raws, self.size, self.device, self.pool, stream, draft=self.draft)
                    if batch.ready is not None:
                        # The merge judges this side by its time per batch: wait for the device to finish
                        # the batch (this thread only), so queued work is not taken for speed.
                        batch.ready.synchronize()
                    merge.put(Decoded(task.index, batch.rows, batch.images, batch.rejects, batch.hashes, SIDE,
                                      batch.ready, done=self._room.release))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            merge.fail(exc)
        finally:
            merge.stopped(SIDE)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.pool.shutdown(wait=True, cancel_futures=True)
