"""The service's Prometheus metrics, in a registry of its own (one per app, so tests can run several)."""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from index.layout import version_number

# From half a millisecond (stage 1 on a small index) to ten seconds (a long queue on 2 CPU cores).
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = ("queue", "decode", "forward", "stage1", "stage2")


class ServiceMetrics:
    """Request counts by status, latency per request and per stage, queue depth, batch sizes, the index."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
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
        self.queue_depth = Gauge("ctl_queue_depth", "Scene queries waiting for a model worker", registry=r)
        self.queue_capacity = Gauge("ctl_queue_capacity", "Scene queries that may wait before 503", registry=r)
        self.rejected = Counter("ctl_rejected", "Scene queries refused because the queue was full", registry=r)
        self.index_products = Gauge("ctl_index_products", "Products in the index being served", registry=r)
        self.index_version = Gauge("ctl_index_version", "Build number of the index being served (0: a flat "
                                   "directory without versions)", registry=r)
        self.index_info = Info("ctl_index", "The index being served", registry=r)
        self.reloads = Counter("ctl_index_reloads", "Attempts to load a new index, by result (swapped, refused)",
                               ["result"], registry=r)
        for stage in STAGES:
            self.stages.labels(stage)
        for result in ("swapped", "refused"):
            self.reloads.labels(result)

    def watch_queue(self, depth: Callable[[], int], capacity: int) -> None:
        self.queue_depth.set_function(depth)
        self.queue_capacity.set(capacity)

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
        return generate_latest(self.registry)
