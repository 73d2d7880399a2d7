"""The service's Prometheus metrics, in a registry of its own (one per app, so tests can run several).

Under `ctl serve --frontends N` every front end is a process of its own and a scrape reaches one of them, so
the front ends share their metrics through prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set
by the model process before it spawns them): counters and histograms are summed over the front ends, the queue's
depth and capacity too, the index's product count and version are the latest any front end recorded.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from index.layout import version_number

# From half a millisecond (stage 1 on a small index) to ten seconds (a long queue on 2 CPU cores).
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = ("queue", "decode", "forward", "stage1", "stage2")
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"   # read by prometheus_client when it is imported
DEPTH_EVERY_S = 0.25                            # how stale a front end's queue depth may be in a shared scrape


def shared_between_processes() -> bool:
    """Whether this process's metrics are written for the other front ends' scrapes (multiprocess mode)."""
    return bool(os.environ.get(MULTIPROCESS_DIR))


class ServiceMetrics:
    """Request counts by status, latency per request and per stage, queue depth, batch sizes, the index."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.shared = shared_between_processes()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ctl_requests", "HTTP requests answered, by route and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("ctl_request_seconds", "Time to answer a request, by route", ["route"],
                                 buckets=SECONDS_BUCKETS, registry=r)
        self.stages = Histogram("ctl_stage_seconds", "Time of one stage of a scene query: queue (waiting for a "
                                "worker), decode, forward (backbone and heads), stage1 (FAISS), stage2 (exact "
                                "re-rank and hits)", ["stage"], buckets=SECONDS_BUCKETS, registry=r)
        self.batch_size = Histogram("ctl_batch_size", "Scenes per backbone forward (micro-batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("ctl_queue_depth", "Scene queries waiting for a model worker", registry=r,
                                 multiprocess_mode="livesum")
        self.queue_capacity = Gauge("ctl_queue_capacity", "Scene queries that may wait before 503", registry=r,
                                    multiprocess_mode="livesum")
        self.rejected = Counter("ctl_rejected", "Scene queries refused because the queue was full", registry=r)
        self.index_products = Gauge("ctl_index_products", "Products in the index being served", registry=r,
                                    multiprocess_mode="livemostrecent")
        self.index_version = Gauge("ctl_index_version", "Build number of the index being served (0: a flat "
                                   "directory without versions)", registry=r, multiprocess_mode="livemostrecent")
        # An Info has no multiprocess form: each process exposes its own (the front ends serve the same index).
        self._own = CollectorRegistry()
        self.index_info = Info("ctl_index", "The index being served", registry=self._own)
        self._exposed = r
        if self.shared:
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed)
        self.reloads = Counter("ctl_index_reloads", "Attempts to load a new index, by result (swapped, refused)",
                               ["result"], registry=r)
        for stage in STAGES:
            self.stages.labels(stage)
        for result in ("swapped", "refused"):
            self.reloads.labels(result)

    def watch_queue(self, depth: Callable[[], int], capacity: int) -> None:
        self.queue_capacity.set(capacity)
        if not self.shared:
            self.queue_depth.set_function(depth)
            return
        # A function is read at scrape time by the process scraped only: the others publish their depth instead.
        def publish() -> None:
            while True:
                self.queue_depth.set(depth())
                time.sleep(DEPTH_EVERY_S)
        threading.Thread(target=publish, name="queue-depth-metric", daemon=True).start()

    def observe_stages(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stages.labels(stage).observe(seconds)

    def serving(self, *, version: str | None, products: int, checkpoint_sha256: str, factory: str | None) -> None:
        """Record the index now being served."""
        self.index_products.set(products)
        self.index_version.set((version_number(version) or 0) if version else 0)
        self.index_info.info({"version": version or "flat", "checkpoint_sha256": checkpoint_sha256,
                              "factory": str(factory)})

    def exposition(self) -> bytes:
        return generate_latest(self._exposed) + generate_latest(self._own)
