"""One model executor per device: uploads decoded in a thread pool, then batched from one queue by model threads.

A scene query is admitted (or refused at once with `QueueFull` when `queue_size` queries are already
waiting: answered 503 with Retry-After), decoded and resized in the decode pool (Pillow releases the GIL,
so decoding runs beside the forward), then put on the ready queue; when a model thread is idle and nothing
is ready, the query goes to that thread undecoded and it decodes the scene itself (one hand-over fewer).
A model thread (one on a GPU, one per core on a CPU: `model_threads`) takes whatever is ready, up to
`max_batch`, the moment it is free: no batching window. A lone query is run at once; while a batch is
in flight the next ones pile up and go through together. Each batch is one backbone forward
(`Retriever.encode_pixels`, padded up to the next of `buckets` on an accelerator so that only those
shapes ever run), then per group of queries with the same parameters one batched stage 1 and stage 2
(`Retriever.retrieve_batch`, `look_batch`, `compatibility_batch`). With `pipeline` the stages run on a
second thread, so the next forward overlaps them (for a GPU: the CPU work of stage 2 no longer leaves
the device idle).

Before it takes a query the model thread warms every batch size it will run (forward and both stages),
and `ready` stays False until it has: no shape is compiled, tuned or allocated for the first time while
a client waits. The retriever can be swapped while queries run (`swap`): a batch reads it once, so each
query is answered wholly by the old index or the new one.
"""
from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from PIL import Image

from common import defaults
from common.errors import CtlError
from pipeline.images import image_to_tensor, load_scene
from retrieval.results import Scene
from retrieval.retriever import Retriever
from service.metrics import STAGES, ServiceMetrics

log = logging.getLogger("ctl.serve")


class QueueFull(CtlError):
    """Every queue slot is taken: the client should come back after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the server is busy: {depth} scene queries are waiting; retry in {retry_after} s")
        self.retry_after = retry_after


class ServiceStopped(CtlError):
    """The server is shutting down and takes no more scene queries."""


class Clock:
    """The executor's time source (a test gives a fake one to see that no query waits for company)."""

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    @staticmethod
    def wait(condition: threading.Condition) -> None:
        """Wait (holding `condition`) until notified: the executor's one wait, only while nothing is ready."""
        condition.wait()


@dataclass
class Query:
    """One scene query: the uploaded bytes and how to answer it together with others of the same `group`.

    `answer(retriever, scenes, timings)` answers a list of scenes that share this query's parameters in
    one batched call (e.g. ``Retriever.retrieve_batch``) and returns one result per scene, in order.
    """

    image: bytes
    answer: Callable[[Retriever, list[Scene], dict], list]
    group: Hashable = None
    future: Future = field(default_factory=Future)
    enqueued: float = 0.0
    timings: dict = field(default_factory=dict)   # seconds per stage: queue, decode, forward, stage1, stage2
    picture: Image.Image | None = None            # the decoded RGB scene
    pixels: torch.Tensor | None = None            # 3 x S x S uint8, resized for the backbone
    decode_here: bool = False                     # handed undecoded to an idle model thread, which decodes it


@dataclass(frozen=True)
class Answer:
    result: object                      # what the query's answer function returned for its scene
    version: str | None                 # the index build that answered
    timings: dict[str, float]


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding n scenes (None: no buckets, run n as it is)."""
    if not buckets:
        return None
    return next((b for b in buckets if b >= n), max(n, buckets[-1]))


def power_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to max_batch (max_batch itself last when it is not a power of two)."""
    sizes = [1 << j for j in range(max_batch.bit_length()) if 1 << j <= max_batch]
    return tuple(sorted({*sizes, max_batch}))


class ModelExecutor:
    """The device's model thread(s), fed by a decode pool and a bounded queue.

    Its forward runs on `threads` torch threads for a lone scene and on `batch_threads` for a batch of
    several. With `model_threads` > 1 (a CPU) that many model threads take batches from the one queue,
    each forwarding on its own torch threads (the traced graph runs without the GIL, so their forwards
    run in parallel): on 2 cores, two model threads of one torch thread each spend less CPU per request
    than one forward on both cores, whose OpenMP team waits and spins at every layer
    (docs/benchmarks-serve.md). One model thread warms up; the others start once it is done.
    """

    def __init__(self, retriever: Retriever, *, threads: int, max_batch: int, queue_size: int,
                 batch_threads: int | None = None, buckets: Sequence[int] = (), decode_threads: int = 2,
                 pipeline: bool = False, model_threads: int = 1, metrics: ServiceMetrics | None = None,
                 exact_decode: bool = False, clock: Clock | None = None):
        batch_threads = threads if batch_threads is None else batch_threads
        for name, value in (("threads", threads), ("batch_threads", batch_threads), ("max_batch", max_batch),
                            ("queue_size", queue_size), ("decode_threads", decode_threads),
                            ("model_threads", model_threads)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self._retriever = retriever
        self.exact_decode = bool(exact_decode)   # False: large JPEGs DCT-scaled (pipeline.images.load_scene)
        self.threads, self.batch_threads = int(threads), int(batch_threads)
        self.max_batch, self.queue_size = int(max_batch), int(queue_size)
        self.buckets = tuple(sorted({int(b) for b in buckets if 0 < int(b) <= self.max_batch}))
        if self.buckets and self.buckets[-1] != self.max_batch:
            self.buckets = (*self.buckets, self.max_batch)
        self.decode_threads, self.pipeline, self.model_threads = int(decode_threads), bool(pipeline), int(model_threads)
        self.metrics = metrics or ServiceMetrics()
        self.clock = clock or Clock()
        self._ready: collections.deque[Query] = collections.deque()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # Idle model threads, the most recently idle last: a query wakes that one (see take).
        self._idle: list[threading.Condition] = []
        self._admitted = 0                 # admitted and not yet in a batch (decoding or ready)
        self._stop = threading.Event()
        self._started = False
        self._threads: list[threading.Thread] = []
        self._live_model_threads = 0
        self._decoder: ThreadPoolExecutor | None = None
        self._finishing: queue.Queue = queue.Queue(maxsize=2)
        self._seconds_per_query = 0.1      # running mean of the model work per query, for Retry-After
        self.warm = threading.Event()
        self.warmed_sizes: tuple[int, ...] = ()
        self.warmup_seconds: float | None = None
        self.metrics.watch_queue(self.depth, self.queue_size)   # last: depth() reads the state above

    # -- the retriever being served ------------------------------------------------------------------
    @property
    def retriever(self) -> Retriever:
        return self._retriever

    def swap(self, retriever: Retriever) -> Retriever:
        """Serve `retriever` from the next batch on; queries already running finish on the old one."""
        old, self._retriever = self._retriever, retriever
        return old

    def batch_sizes(self) -> tuple[int, ...]:
        """Every batch shape the backbone will run: the buckets, or without them 1 and max_batch."""
        return self.buckets or tuple(sorted({1, self.max_batch}))

    # -- life cycle ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._started and not self._stop.is_set()

    @property
    def ready(self) -> bool:
        """Running and warmed up: every batch size has been through the forward and both stages."""
        return self.running and self.warm.is_set()

    def start(self) -> None:
        if self._started:
            return
        self._stop.clear()
        self._started = True
        self._decoder = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        self._threads = [threading.Thread(target=self._model_loop, name="model-executor", daemon=True)]
        self._live_model_threads = 1
        if self.pipeline:
            self._threads.append(threading.Thread(target=self._finish_loop, name="model-stages", daemon=True))
        for t in self._threads:
            t.start()

    def _start_more_model_threads(self) -> None:
        """After the warm-up: the other model threads (with model_threads > 1), unless stopping."""
        with self._cond:
            if self._stop.is_set():
                return
            more = [threading.Thread(target=self._serve_batches, name=f"model-executor-{j + 1}", daemon=True)
                    for j in range(1, self.model_threads)]
            self._threads.extend(more)
            self._live_model_threads += len(more)
        for t in more:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch being run, refuse what is still queued, and join the threads."""
        self._stop.set()
        self._wake_every_idle_thread()
        if self._decoder is not None:
            self._decoder.shutdown(wait=True)   # decodes in progress end on the ready queue
        with self._cond:
            threads, self._threads = list(self._threads), []
        for t in threads:
            t.join(timeout)
        with self._cond:
            left, self._admitted = list(self._ready), 0
            self._ready.clear()
        for q in left:
            if q.future.set_running_or_notify_cancel():
                q.future.set_exception(ServiceStopped("the server is shutting down"))

    # -- queries -----------------------------------------------------------------------------------------
    def depth(self) -> int:
        """Queries admitted and not yet in a batch (being decoded or waiting for the model thread)."""
        return self._admitted

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely drained by one query's worth of room (at least 1)."""
        return max(1, math.ceil(self.depth() * self._seconds_per_query / self.model_threads))

    def submit(self, query: Query) -> Future:
        """Admit a query; QueueFull at once when every slot is taken, ServiceStopped when shutting down."""
        if not self.running:
            raise ServiceStopped("the server is not running its model executor (starting or shutting down)")
        with self._cond:
            if self._admitted >= self.queue_size:
                self.metrics.rejected.inc()
                raise QueueFull(self._admitted, self.retry_after())
            self._admitted += 1
            query.enqueued = self.clock.now()
            # An idle model thread and nothing ready: that thread decodes the scene itself, on the core that
            # runs its forward next, instead of a decode thread that then has to wake it.
            query.decode_here = bool(self._idle) and not self._ready
            if query.decode_here:
                self._ready.append(query)
                self._idle.pop().notify()
                return query.future
        try:
            self._decoder.submit(self._decode, query)
        except RuntimeError:               # the pool was shut down between the check and now
            with self._cond:
                self._admitted -= 1
            raise ServiceStopped("the server is shutting down") from None
        return query.future

    def _decode(self, query: Query) -> None:
        """Decode one upload in the decode pool, then hand it to the model threads."""
        if self._decoded(query):
            self.put_ready(query)
        else:
            with self._cond:
                self._admitted -= 1

    def _decoded(self, query: Query) -> bool:
        """Decode and resize one upload; False when it is not a usable image, answered here, alone."""
        start = self.clock.now()
        try:
            picture = load_scene(query.image, self._retriever.input_size, exact=self.exact_decode)
            query.picture = picture if picture.mode == "RGB" else picture.convert("RGB")
            query.pixels = image_to_tensor(query.picture, self._retriever.input_size)
        except Exception as exc:  # noqa: BLE001 - ImageError and any other: answered to this query alone
            if query.future.set_running_or_notify_cancel():
                query.future.set_exception(exc)
            return False
        query.timings["decode"] = self.clock.now() - start
        return True

    def put_ready(self, query: Query) -> None:
        """Hand a decoded query to the model thread."""
        with self._cond:
            self._ready.append(query)
            if self._idle:
                self._idle.pop().notify()

    def _wake_every_idle_thread(self) -> None:
        with self._cond:
            for waiter in self._idle:
                waiter.notify()

    def take(self) -> list[Query]:
        """The next batch: everything ready, up to max_batch, as soon as one query is. Blocks only while
        nothing is ready (never to wait for company); [] when stopping, or when the one query handed over
        undecoded was not an image (answered here).

        Of several idle model threads the one that went idle last is woken (last in, first out): at low
        concurrency the queries keep going to one thread, whose core still holds its caches. Woken in
        turn (first in, first out, as one shared condition does), two model threads at concurrency 1 cost
        17.1-17.5 ms of model-thread CPU per query against 15.4-16.0 on one (2 cores, synthetic 2,500
        products, no HTTP: docs/benchmarks-serve.md).
        """
        with self._cond:
            waiter = None
            while not self._ready and not self._stop.is_set():
                waiter = waiter or threading.Condition(self._lock)   # one lock: the executor's
                if waiter not in self._idle:      # put_ready removes the waiter it wakes
                    self._idle.append(waiter)
                self.clock.wait(waiter)
            if waiter is not None and waiter in self._idle:
                self._idle.remove(waiter)
            batch = [self._ready.popleft() for _ in range(min(self.max_batch, len(self._ready)))]
            self._admitted -= len(batch)
        now = self.clock.now()
        for q in batch:
            q.timings["queue"] = now - q.enqueued - q.timings.get("decode", 0.0)
        return [q for q in batch if not q.decode_here or self._decoded(q)]

    # -- the model thread ---------------------------------------------------------------------------------
    def _model_loop(self) -> None:
        """The first model thread: warm up, start the others, then take batches like them."""
        torch.set_num_threads(self.threads)   # this thread's OpenMP team
        if self._retriever.device.type == "cuda":
            torch.backends.cudnn.benchmark = True   # fixed shapes: each tuned once, at warm-up
        try:
            self.warm_up()
        except Exception:
            log.exception("the model executor's warm-up failed: the service is not ready")
            self._stop.set()
            self._model_thread_done()
            return
        self._start_more_model_threads()
        self._serve_batches()

    def _model_thread_done(self) -> None:
        """The last model thread to end tells the stages thread to end (after what they handed it)."""
        with self._cond:
            self._live_model_threads -= 1
            last = self._live_model_threads == 0
        if last and self.pipeline:
            self._finishing.put(None)

    def _serve_batches(self) -> None:
        torch.set_num_threads(self.threads)
        try:
            while not self._stop.is_set():
                batch = self.take()
                if batch:
                    self.run_batch(batch)
        except Exception:
            log.exception("a model thread stopped: the service is not ready")
            self._stop.set()
            self._wake_every_idle_thread()
        finally:
            self._model_thread_done()

    def warm_up(self) -> None:
        """Every batch size through the forward and both stages of each endpoint, before `ready`."""
        start = time.perf_counter()
        retriever = self._retriever
        grey = Image.new("RGB", (retriever.input_size, retriever.input_size), (128, 128, 128))
        one = image_to_tensor(grey, retriever.input_size)
        with torch.inference_mode():
            for size in self.batch_sizes():
                self._use_threads(size)
                scenes = retriever.scenes_from_pixels(one.expand(size, -1, -1, -1).clone(), [grey] * size,
                                                      pad_to=bucket_for(size, self.buckets))
                retriever.retrieve_batch(scenes, k=defaults.K)        # the default C: the shapes most queries use
                retriever.look_batch(scenes, k=defaults.LOOK_K)
                if retriever.device.type == "cuda":
                    torch.cuda.synchronize(retriever.device)
        self.warmed_sizes = self.batch_sizes()
        self.warmup_seconds = time.perf_counter() - start
        self.warm.set()
        log.info("model executor warm: batch sizes %s in %.1f s", list(self.warmed_sizes), self.warmup_seconds)

    def _use_threads(self, batch_size: int) -> None:
        threads = self.threads if batch_size == 1 else self.batch_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def run_batch(self, batch: list[Query]) -> None:
        """One forward for the batch, then its stages (on the stages thread with `pipeline`)."""
        retriever = self._retriever            # read once: the whole batch is answered by one index
        started = time.perf_counter()
        live = [q for q in batch if q.future.set_running_or_notify_cancel()]   # skip clients that went away
        if not live:
            return
        forward_start = self.clock.now()
        self._use_threads(len(live))
        try:
            pixels = torch.stack([q.pixels for q in live])
            scenes = retriever.scenes_from_pixels(pixels, [q.picture for q in live],
                                                  pad_to=bucket_for(len(live), self.buckets))
        except Exception as exc:  # noqa: BLE001 - answered to the batch's queries, the executor goes on
            log.exception("forward failed on a batch of %d", len(live))
            for q in live:
                q.future.set_exception(exc)
            return
        forward = self.clock.now() - forward_start
        self.metrics.batch_size.observe(len(live))
        for q in live:
            q.timings["forward"] = forward
        if self.pipeline:
            self._finishing.put((retriever, live, scenes, started))
        else:
            self.finish(retriever, live, scenes, started)

    def _finish_loop(self) -> None:
        torch.set_num_threads(1)
        while True:
            item = self._finishing.get()
            if item is None:
                return
            self.finish(*item)

    def finish(self, retriever: Retriever, batch: list[Query], scenes: list[Scene], started: float) -> None:
        """Stage 1 and 2 for each group of queries with the same parameters, one batched call per group."""
        groups: dict[Hashable, list[int]] = {}
        for j, q in enumerate(batch):
            groups.setdefault(q.group if q.group is not None else ("alone", j), []).append(j)
        for members in groups.values():
            self._answer_group(retriever, [batch[j] for j in members], [scenes[j] for j in members])
        per_query = (time.perf_counter() - started) / len(batch)
        self._seconds_per_query += 0.1 * (per_query - self._seconds_per_query)

    def _answer_group(self, retriever: Retriever, queries: list[Query], scenes: list[Scene]) -> None:
        stages: dict[str, float] = {}
        try:
            results = queries[0].answer(retriever, scenes, stages)
        except Exception as exc:  # noqa: BLE001 - one query's failure must not fail the others: each alone
            if len(queries) > 1:
                for q, scene in zip(queries, scenes, strict=True):
                    self._answer_group(retriever, [q], [scene])
                return
            queries[0].future.set_exception(exc)
            return
        for q, result in zip(queries, results, strict=True):
            q.timings.update(stages)
            timings = {stage: q.timings[stage] for stage in STAGES if stage in q.timings}   # in the order they ran
            self.metrics.observe_stages(timings)
            q.future.set_result(Answer(result=result, version=retriever.index.version, timings=timings))
