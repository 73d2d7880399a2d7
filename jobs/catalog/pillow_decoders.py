"""embed-catalog's Pillow side: worker processes decode and resize into shared-memory slots; slot numbers travel.

The job (a `decode_merge.Merge` side) takes a batch when it has a free slot (`shm_ring.SlotRing`) and
room for it (two batches in progress keep every worker busy while one is being assembled), cuts it
into chunks, one per worker, and queues (batch, slot, offset, rows). A worker decodes each row with
the CPU path's pixel policy (`catalog_images.decode_into`) straight into its place in the slot and
answers with the rows, their hashes and the rejects — a few hundred bytes. Once every chunk of a
batch is back it goes to the merge as a view of the slot (CPU) or as a device copy made on a side
stream from the page-locked slot (CUDA); the slot is reused once the network or the copy is done.

This replaces a DataLoader, whose pickled per-batch tensors, collate and pinning copies held a 16-core
GPU machine's CPU-decoding job to under a fifth of what its decoders alone reach (docs/benchmarks-gpu.md).

Workers are forked (they inherit the ring and the catalogue paths), die with the job (PR_SET_PDEATHSIG
on Linux, and a poll of their parent everywhere) and run at a lower priority on CPU-only runs. With
workers=0 a thread of this process decodes instead (the same code, no processes).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import multiprocessing as mp
import os
import queue
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from jobs.catalog.catalog_images import decode_into
from jobs.catalog.decode_merge import Decoded, Merge
from jobs.catalog.shm_ring import SlotRing
from jobs.workers import lower_priority

SIDE = "pillow"
MAX_CHUNK = 64
IN_PROGRESS = 2        # batches being decoded at once: one assembling while the next keeps the workers busy
WAITING = 3            # decoded batches that may wait for the network (their turn in the merge, or consumed now)
POLL = 0.5             # seconds between looks at a closed stream or a dead process
PR_SET_PDEATHSIG = 1
SUBMITTED, STOP = "submitted", "stop"      # messages from this process to its own collector thread


def chunk_size(batch: int, workers: int) -> int:
    """Rows per task: one chunk per worker per batch, at most MAX_CHUNK."""
    return max(1, min(MAX_CHUNK, math.ceil(batch / max(1, workers))))


def decode_chunk(paths: Sequence[str], slot: np.ndarray, start: int, rows: Sequence[int], draft: bool):
    """Decode `rows` into slot[start:...]: ([(position, row, sha256)], [(row, reason)])."""
    good, rejects = [], []
    for pos, row in enumerate(rows, start):
        reason, sha = decode_into(paths[row], slot[pos], draft=draft)
        if reason is None:
            good.append((pos, row, sha))
        else:
            rejects.append((row, reason))
    return good, rejects


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:           # the parent died before prctl took effect
        os._exit(0)


def _worker(ring: SlotRing, paths: Sequence[str], tasks, results, draft: bool, parent: int, nice: bool) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the job handles Ctrl-C and stops its workers
    if nice:
        lower_priority(0)
    while True:
        try:
            task = tasks.get(timeout=POLL)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            return
        index, slot, start, rows = task
        try:
            good, rejects = decode_chunk(paths, ring.view(slot), start, rows, draft)
        except BaseException as exc:  # noqa: BLE001 - reported to the job, which stops
            results.put(("error", f"{type(exc).__name__}: {exc}"))
            return
        results.put((index, start, len(rows), good, rejects))


@dataclass
class _Assembly:
    index: int
    rows: np.ndarray
    slot: int
    missing: int
    good: list = field(default_factory=list)
    rejects: list = field(default_factory=list)


class PillowDecoders:
    """The Pillow side of the merge: `workers` processes (0: a thread here) decoding batches of `batch` images."""

    name = SIDE

    def __init__(self, paths: Sequence[str], size: int, batch: int, workers: int, *, device: torch.device,
                 draft: bool = False, nice: bool = False):
        self.paths, self.size, self.batch, self.workers, self.draft = paths, size, batch, workers, draft
        self.device = device
        self.chunk = chunk_size(batch, workers)
        self.ring = SlotRing(IN_PROGRESS + WAITING, batch, size)
        self.cuda = device.type == "cuda"
        self._room = threading.Semaphore(IN_PROGRESS)
        self._pending: dict[int, _Assembly] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._merge: Merge | None = None
        self.procs = []
        if workers:
            ctx = mp.get_context("fork")      # the ring and the paths are inherited, not pickled
            self.tasks, self.results = ctx.Queue(), ctx.Queue()
            self.procs = [ctx.Process(target=_worker, name=f"embed-decode-{i}", daemon=True,
                                      args=(self.ring, paths, self.tasks, self.results, draft, os.getpid(), nice))
                          for i in range(workers)]
            try:
                for proc in self.procs:
                    proc.start()
            except BaseException:
                self.close()                  # the ones already started
                raise
        self.pinned = self.ring.pin() if self.cuda else False      # after the fork: the workers never touch CUDA

    def start(self, merge: Merge) -> None:
        """Start taking batches from the merge (threads: after every fork)."""
        self._merge = merge
        self._stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        targets = [self._submit] + ([self._collect] if self.workers else [])
        self._threads = [threading.Thread(target=t, name=f"embed-{SIDE}-{t.__name__[1:]}", daemon=True)
                         for t in targets]
        for thread in self._threads:
            thread.start()

    # -- threads -----------------------------------------------------------------------------------

    def _submit(self) -> None:
        merge = self._merge
        try:
            while not merge.closed and not self._closing.is_set():
                if not self._room.acquire(timeout=POLL):
                    continue
                slot = None
                while slot is None and not merge.closed and not self._closing.is_set():
                    slot = self.ring.acquire(timeout=POLL)
                task = merge.take(SIDE) if slot is not None else None
                if task is None:
                    if slot is not None:
                        self.ring.release(slot)
                    break
                with self._lock:
                    self._pending[task.index] = _Assembly(task.index, task.rows, slot, len(task.rows))
                rows = task.rows.tolist()
                for start in range(0, len(rows), self.chunk):
                    part = rows[start:start + self.chunk]
                    if self.workers:
                        self.tasks.put((task.index, slot, start, part))
                    else:
                        self._take_result((task.index, start, len(part),
                                           *decode_chunk(self.paths, self.ring.view(slot), start, part, self.draft)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            merge.fail(exc)
        finally:
            if self.workers:
                self.results.put((SUBMITTED,))      # wakes the collector: it ends once the last batch is in
            else:
                merge.stopped(SIDE)

    def _collect(self) -> None:
        merge = self._merge
        try:
            submitted = False
            while not self._closing.is_set() and not (submitted and not self._pending):
                try:
                    message = self.results.get(timeout=POLL)
                except queue.Empty:
                    if merge.closed:
                        return
                    dead = [p for p in self.procs if p.exitcode is not None]
                    if dead:
                        raise RuntimeError(f"a Pillow decode worker died (exit code {dead[0].exitcode})") from None
                    continue
                if message[0] == SUBMITTED:
                    submitted = True
                elif message[0] == "error":
                    raise RuntimeError(f"a Pillow decode worker failed: {message[1]}")
                elif message[0] != STOP:
                    self._take_result(message)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            merge.fail(exc)
        finally:
            merge.stopped(SIDE)

    def _take_result(self, message) -> None:
        index, _start, count, good, rejects = message
        with self._lock:
            assembly = self._pending[index]
            assembly.good.extend(good)
            assembly.rejects.extend(rejects)
            assembly.missing -= count
            if assembly.missing:
                return
            del self._pending[index]
        self._room.release()
        self._merge.put(self._finish(assembly))

    def _finish(self, a: _Assembly) -> Decoded:
        """The batch's images as the network will read them; the slot goes back once they have been read."""
        good = sorted(a.good)
        rejects = sorted(a.rejects)
        rows, hashes = [row for _, row, _ in good], [sha for _, _, sha in good]
        if not good:
            self.ring.release(a.slot)
            return Decoded(a.index, [], None, rejects, [], SIDE)
        host = self.ring.images(a.slot, len(a.rows))
        keep = None if len(good) == len(a.rows) else torch.tensor([pos for pos, _, _ in good])
        if self.cuda:
            with torch.cuda.stream(self._stream):
                images = host.to(self.device, non_blocking=self.pinned)
                if keep is not None:
                    images = images[keep.to(self.device)]
                ready = torch.cuda.Event()
                ready.record(self._stream)
            self.ring.release(a.slot, after=ready)
            return Decoded(a.index, rows, images, rejects, hashes, SIDE, ready)
        if keep is not None:                  # a copy without the rejected places: the slot is free at once
            images = host[keep]
            self.ring.release(a.slot)
            return Decoded(a.index, rows, images, rejects, hashes, SIDE)
        return Decoded(a.index, rows, host, rejects, hashes, SIDE, done=functools.partial(self.ring.release, a.slot))

    # -- shutdown ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the threads and the workers (at once if the stream was cut short); idempotent."""
        self._closing.set()
        if self.procs:
            self.results.put((STOP,))               # wakes the collector at once
        for thread in self._threads:
            thread.join(timeout=10)
        if self.procs:
            for _ in self.procs:
                with contextlib.suppress(Exception):
                    self.tasks.put(None)
            started = [proc for proc in self.procs if proc.pid is not None]
            for proc in started:
                proc.join(timeout=2)
            for proc in started:
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
            for q in (self.tasks, self.results):
                q.cancel_join_thread()
                q.close()
            self.procs = []
        self.ring.close()
