"""One backbone forward shared by front-end processes: pixels in shared memory, batches formed by the model process.

`ctl serve --frontends N` runs N front-end processes (HTTP, multipart, decoding, stage 1, stage 2, JSON: each
with its own GIL) and one model process that holds the device. A front end's `Retriever.encode_pixels` is a
`RemoteForward`: it writes the resized uint8 scenes into a shared-memory slot of its own, sends the row count
down the slot's pipe and waits for the answer, which the model process writes back into the same slot (f_s,
f_i and the presence probabilities, float32). The model process's `ForwardServer` takes every request that is
waiting, from every front end, up to `max_rows` rows, and runs them as one forward (padded to a bucket when
`buckets` is given): a lone request runs at once, others pile up while a forward is in flight (as in
service/executor.py). Why processes at all: with a forward that costs nothing, one process answered at most
~550 `/v1/retrieve` requests a second on 2 cores with half a core idle, serialised by its GIL
(docs/benchmarks-serve.md, 2026-12-07), against the 1,500 a GPU should serve.
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import connection, reduction
from multiprocessing.connection import Connection, Pipe

import numpy as np
import torch

from service.executor import ServiceStopped

log = logging.getLogger("ctl.serve")

# A forward: B x 3 x S x S uint8 pixels -> (f_s B x d, f_i B x R x d, presence B x K or None), as
# Retriever.encode_pixels.
Forward = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


class ForwardUnavailable(ServiceStopped):
    """The model process did not answer (it is gone, or stuck): the client is told 503, to come back."""


class ForwardFailed(RuntimeError):
    """The model process's forward raised: answered 500, as a failed forward in one process is."""


@dataclass(frozen=True)
class ForwardShape:
    """What one slot holds: up to `rows` scenes of S x S pixels in, their embeddings out."""

    rows: int           # most scenes per request (a longer batch is sent in parts)
    size: int           # S, the backbone's input side
    dim: int            # d
    regions: int        # R
    categories: int     # K, the presence head's outputs (0: no head)

    @property
    def pixel_bytes(self) -> int:
        return self.rows * 3 * self.size * self.size

    @property
    def output_floats(self) -> int:
        return self.rows * (self.dim + self.regions * self.dim + self.categories)

    @classmethod
    def of(cls, forward: Forward, rows: int, size: int) -> ForwardShape:
        """The shape of `forward`'s outputs, read from one grey scene through it."""
        f_s, f_i, presence = forward(torch.full((1, 3, size, size), 128, dtype=torch.uint8))
        return cls(rows=rows, size=size, dim=int(f_s.shape[1]), regions=int(f_i.shape[1]),
                   categories=0 if presence is None else int(presence.shape[1]))


class SharedFd:
    """An anonymous shared file (memfd) that travels to a spawned process as a file descriptor.

    No name anywhere: nothing to unlink, nothing left behind when a process is killed (the memory goes with the
    last descriptor or mapping), and no resource tracker involved (multiprocessing.shared_memory's, shared by
    spawned children, lost its bookkeeping when front ends attached and exited: KeyError tracebacks at shutdown).
    """

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def create(cls, size: int) -> SharedFd:
        fd = os.memfd_create("ctl-forward-slot", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd)

    def map(self) -> mmap.mmap:
        return mmap.mmap(self.fd, 0)

    def __reduce__(self):
        # pickled into a spawned process: the descriptor is duplicated into it, as multiprocessing does for pipes
        return _rebuild_shared_fd, (reduction.DupFd(self.fd),)


def _rebuild_shared_fd(dup) -> SharedFd:
    return SharedFd(dup.detach())


class SlotViews:
    """Numpy views of one slot's shared memory: pixels in, f_s / f_i / presence out."""

    def __init__(self, memory: mmap.mmap, shape: ForwardShape):
        self.memory = memory
        s, n, d, r, k = shape.size, shape.rows, shape.dim, shape.regions, shape.categories
        self.pixels = np.ndarray((n, 3, s, s), dtype=np.uint8, buffer=memory)
        floats = np.ndarray((shape.output_floats,), dtype=np.float32, buffer=memory, offset=shape.pixel_bytes)
        self.f_s = floats[:n * d].reshape(n, d)
        self.f_i = floats[n * d:n * d + n * r * d].reshape(n, r, d)
        self.presence = floats[n * d + n * r * d:].reshape(n, k) if k else None

    def release(self) -> None:
        # The views hold the buffer: drop them before closing the mapping.
        self.pixels = self.f_s = self.f_i = self.presence = None
        self.memory.close()


@dataclass(frozen=True)
class SlotHandle:
    """What a front end receives for one slot (picklable into a spawned process): its memory, its pipe end."""

    memory: SharedFd
    conn: Connection
    shape: ForwardShape


@dataclass
class _Request:
    views: SlotViews
    conn: Connection
    rows: int


class ForwardServer:
    """The model process's side: `frontends` x `slots` shared slots, a receiver thread and `threads` forward threads."""

    def __init__(self, forward: Forward, shape: ForwardShape, *, frontends: int, slots: int, threads: int = 1,
                 buckets: Sequence[int] = (), on_thread_start: Callable[[], None] | None = None):
        if frontends < 1 or slots < 1 or threads < 1:
            raise ValueError("frontends, slots and threads must be at least 1")
        self.forward = forward
        self.shape = shape
        self.buckets = tuple(buckets)
        self.threads = threads
        self.on_thread_start = on_thread_start
        self.handles: list[list[SlotHandle]] = []
        self._views: dict[int, SlotViews] = {}        # id(our pipe end) -> the slot's views
        self._fds: list[SharedFd] = []
        self._conns: list[Connection] = []
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self.batches = 0                               # forwards run (tests read it)
        size = shape.pixel_bytes + 4 * shape.output_floats
        try:
            for _ in range(frontends):
                handles = []
                for _ in range(slots):
                    memory = SharedFd.create(size)
                    self._fds.append(memory)
                    ours, theirs = Pipe(duplex=True)
                    self._views[id(ours)] = SlotViews(memory.map(), shape)
                    self._conns.append(ours)
                    handles.append(SlotHandle(memory, theirs, shape))
                self.handles.append(handles)
        except BaseException:
            self.close()
            raise

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._workers = [threading.Thread(target=self._receive, name="forward-receiver", daemon=True)]
        self._workers += [threading.Thread(target=self._forward_loop, name=f"forward-{j}", daemon=True)
                          for j in range(self.threads)]
        for thread in self._workers:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests; a forward in flight finishes and is answered."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._workers:
            thread.join(timeout)
        self._workers = []

    def close(self) -> None:
        """Stop, close the pipes and this process's mappings (the memory goes with the front ends' last ones)."""
        self.stop()
        for conn in self._conns:
            conn.close()
        for views in self._views.values():
            views.release()
        for memory in self._fds:
            os.close(memory.fd)
        self._views.clear()
        self._conns.clear()
        self._fds.clear()

    # -- the two loops ---------------------------------------------------------------------------------
    def _receive(self) -> None:
        live = list(self._conns)
        while live and not self._stopping.is_set():
            for conn in connection.wait(live, timeout=0.2):
                try:
                    rows = conn.recv()
                except (EOFError, OSError):        # that front end is gone: its slot is never used again
                    live.remove(conn)
                    continue
                with self._cond:
                    self._pending.append(_Request(self._views[id(conn)], conn, int(rows)))
                    self._cond.notify()

    def take(self) -> list[_Request]:
        """Every waiting request that fits in one forward of `shape.rows` rows, oldest first; waits while none."""
        with self._cond:
            while not self._pending and not self._stopping.is_set():
                self._cond.wait()
            taken, total = [], 0
            while self._pending and (not taken or total + self._pending[0].rows <= self.shape.rows):
                request = self._pending.popleft()
                taken.append(request)
                total += request.rows
            return taken

    def _forward_loop(self) -> None:
        if self.on_thread_start is not None:
            self.on_thread_start()
        while True:
            batch = self.take()
            if not batch:
                return
            self.run(batch)

    def run(self, batch: list[_Request]) -> None:
        """One forward for the requests of `batch`, each answered in its own slot."""
        try:
            pixels = torch.from_numpy(np.concatenate([r.views.pixels[:r.rows] for r in batch]))
            total = int(pixels.shape[0])
            pad_to = next((b for b in self.buckets if b >= total), None) if self.buckets else None
            f_s, f_i, presence = self.forward(pixels, pad_to=pad_to)
            f_s, f_i = f_s.float().cpu().numpy(), f_i.float().cpu().numpy()
            presence = None if presence is None else presence.float().cpu().numpy()
        except Exception as exc:  # noqa: BLE001 - answered to the requests; the server goes on
            log.exception("shared forward failed on %d request(s)", len(batch))
            for request in batch:
                self._answer(request, ("error", f"the model process's forward failed: {exc}"))
            return
        self.batches += 1
        start = 0
        for request in batch:
            end = start + request.rows
            request.views.f_s[:request.rows] = f_s[start:end]
            request.views.f_i[:request.rows] = f_i[start:end]
            if request.views.presence is not None and presence is not None:
                request.views.presence[:request.rows] = presence[start:end]
            self._answer(request, ("ok", request.rows))
            start = end

    @staticmethod
    def _answer(request: _Request, message: tuple) -> None:
        with contextlib.suppress(OSError):   # the front end went away while its forward ran
            request.conn.send(message)


class RemoteForward:
    """A front end's side: `encode_pixels` through the model process, one free slot per call in flight."""

    def __init__(self, handles: Sequence[SlotHandle], *, timeout_s: float = 120.0):
        if not handles:
            raise ValueError("a remote forward needs at least one slot")
        self.shape = handles[0].shape
        self.timeout_s = timeout_s
        self._free: queue.Queue[tuple[SlotViews, Connection]] = queue.Queue()
        self._slots: list[tuple[SlotViews, Connection]] = []
        for handle in handles:
            slot = (SlotViews(handle.memory.map(), handle.shape), handle.conn)
            self._slots.append(slot)
            self._free.put(slot)

    def encode_pixels(self, pixels: torch.Tensor, *, pad_to: int | None = None):
        """(f_s B x d, f_i B x R x d, presence B x K or None) of B resized uint8 scenes; `pad_to` is the model
        process's business (it pads the batch it forms), so it is ignored here."""
        n = int(pixels.shape[0])
        if n > self.shape.rows:                      # larger than a slot: in parts, in order
            parts = [self.encode_pixels(pixels[i:i + self.shape.rows]) for i in range(0, n, self.shape.rows)]
            presence = None if parts[0][2] is None else torch.cat([p[2] for p in parts])
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), presence
        views, conn = self._free.get()
        # A slot goes back to the pool only once its answer is read: after a timeout a late answer would
        # otherwise be taken for the next call's.
        views.pixels[:n] = pixels.numpy()
        try:
            conn.send(n)
            if not conn.poll(self.timeout_s):
                raise ForwardUnavailable(f"the model process did not answer in {self.timeout_s:.0f} s")
            status, detail = conn.recv()
        except (EOFError, OSError) as exc:
            raise ForwardUnavailable(f"the model process is gone ({type(exc).__name__})") from None
        try:
            if status != "ok":
                raise ForwardFailed(detail)
            f_s = torch.from_numpy(views.f_s[:n].copy())
            f_i = torch.from_numpy(views.f_i[:n].copy())
            presence = None if views.presence is None else torch.from_numpy(views.presence[:n].copy())
            return f_s, f_i, presence
        finally:
            self._free.put((views, conn))

    def close(self) -> None:
        while self._slots:
            views, conn = self._slots.pop()
            views.release()
            conn.close()
