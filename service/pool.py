"""Model work off the event loop: a bounded queue of scene queries, a few worker threads, optional micro-batching.

Each worker takes the oldest query, and when batching is on also whatever else is waiting (up to
`max_batch`, waiting at most `max_wait_ms` for more), decodes the uploads, runs one backbone forward
for the batch (`Retriever.encode_scenes`), then stage 1 and stage 2 for each query. Decoding runs on
the workers too, so all CPU-heavy work of a request is bounded by the worker count: on 2 cores more
threads than cores only adds OpenMP contention (docs/benchmarks-query.md).

The queue is bounded: a query that finds it full is refused at once (`QueueFull`, answered 503 with
Retry-After) instead of waiting behind an ever longer line. The retriever can be swapped while queries
run (`swap`): a batch reads it once, so each query is answered wholly by the old index or the new one.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from common.errors import CtlError
from pipeline.images import load_image
from retrieval.results import Scene
from retrieval.retriever import Retriever
from service.metrics import ServiceMetrics

log = logging.getLogger("ctl.serve")


class QueueFull(CtlError):
    """Every queue slot is taken: the client should come back after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the server is busy: {depth} scene queries are waiting; retry in {retry_after} s")
        self.retry_after = retry_after


class ServiceStopped(CtlError):
    """The server is shutting down and takes no more scene queries."""


@dataclass
class Query:
    """One scene query: the uploaded bytes and what to answer once the scene is encoded."""

    image: bytes
    answer: Callable[[Retriever, Scene, dict], dict]   # (retriever, scene, timings) -> JSON body
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Answer:
    body: dict
    version: str | None                 # the index build that answered
    timings: dict[str, float]           # seconds per stage: queue, decode, forward, stage1, stage2


class ModelPool:
    """`workers` threads with `threads` torch threads each, fed by a queue of at most `queue_size` queries."""

    def __init__(self, retriever: Retriever, *, workers: int, threads: int, max_batch: int, max_wait_ms: float,
                 queue_size: int, metrics: ServiceMetrics | None = None):
        for name, value, least in (("workers", workers, 1), ("threads", threads, 1), ("max_batch", max_batch, 1),
                                   ("queue_size", queue_size, 1), ("max_wait_ms", max_wait_ms, 0)):
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        self._retriever = retriever
        self.workers, self.threads = int(workers), int(threads)
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1e3
        self.queue_size = int(queue_size)
        self.metrics = metrics or ServiceMetrics()
        self.metrics.watch_queue(self.depth, self.queue_size)
        self._queue: queue.Queue[Query] = queue.Queue(maxsize=self.queue_size)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seconds_per_query = 0.1    # running mean of the work per query, for Retry-After

    # -- the retriever being served ------------------------------------------------------------------
    @property
    def retriever(self) -> Retriever:
        return self._retriever

    def swap(self, retriever: Retriever) -> Retriever:
        """Serve `retriever` from the next batch on; queries already running finish on the old one."""
        old, self._retriever = self._retriever, retriever
        return old

    # -- life cycle ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        self._threads = [threading.Thread(target=self._work, name=f"model-worker-{i}", daemon=True)
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batches being run, refuse what is still queued, and join the workers."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        while True:
            try:
                q = self._queue.get_nowait()
            except queue.Empty:
                break
            if q.future.set_running_or_notify_cancel():
                q.future.set_exception(ServiceStopped("the server is shutting down"))

    # -- queries -----------------------------------------------------------------------------------------
    def depth(self) -> int:
        """Queries waiting for a worker."""
        return self._queue.qsize()

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely drained by one query's worth of room (at least 1)."""
        return max(1, math.ceil(self.depth() * self._seconds_per_query / self.workers))

    def submit(self, query: Query) -> Future:
        """Queue a query; QueueFull at once when every slot is taken, ServiceStopped when shutting down."""
        if not self.running:
            raise ServiceStopped("the server is not running its model workers (starting or shutting down)")
        try:
            self._queue.put_nowait(query)
        except queue.Full:
            self.metrics.rejected.inc()
            raise QueueFull(self.depth(), self.retry_after()) from None
        return query.future

    # -- the workers ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        torch.set_num_threads(self.threads)   # this thread's OpenMP team: workers x threads <= cores on a CPU
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first, *self._more(first.enqueued)]
            started = time.perf_counter()
            try:
                self._run(batch)
            except BaseException as exc:  # never lose a worker, never leave a client waiting
                log.exception("model worker failed on a batch of %d", len(batch))
                for q in batch:
                    if not q.future.done():
                        q.future.set_exception(exc)
            per_query = (time.perf_counter() - started) / len(batch)
            self._seconds_per_query += 0.1 * (per_query - self._seconds_per_query)

    def _more(self, since: float) -> list[Query]:
        """Up to max_batch - 1 more queries: those waiting now, and those arriving within max_wait of `since`."""
        more: list[Query] = []
        deadline = since + self.max_wait
        while len(more) < self.max_batch - 1:
            remaining = deadline - time.perf_counter()
            try:
                more.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return more

    def _run(self, batch: list[Query]) -> None:
        retriever = self._retriever            # read once: the whole batch is answered by one index
        now = time.perf_counter()
        decoded: list[tuple[Query, dict, object]] = []
        for q in batch:
            if not q.future.set_running_or_notify_cancel():
                continue                       # the client went away while it waited
            timings = {"queue": now - q.enqueued}
            start = time.perf_counter()
            try:
                image = load_image(q.image)
            except Exception as exc:  # noqa: BLE001 - ImageError and any other: answered to this query alone
                q.future.set_exception(exc)
                continue
            timings["decode"] = time.perf_counter() - start
            decoded.append((q, timings, image))
        if not decoded:
            return
        forward: dict[str, float] = {}
        try:
            scenes = retriever.encode_scenes([image for _, _, image in decoded], timings=forward)
        except Exception as exc:  # noqa: BLE001 - answered to the batch's queries, the worker goes on
            for q, _, _ in decoded:
                q.future.set_exception(exc)
            return
        self.metrics.batch_size.observe(len(decoded))
        for (q, timings, _), scene in zip(decoded, scenes):
            timings.update(forward)
            try:
                body = q.answer(retriever, scene, timings)
            except Exception as exc:  # noqa: BLE001 - answered to this query alone (RetrievalError: 422)
                q.future.set_exception(exc)
                continue
            self.metrics.observe_stages(timings)
            q.future.set_result(Answer(body=body, version=retriever.index.version, timings=timings))
