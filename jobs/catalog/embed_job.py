"""The seam between `embed-catalog` and its engines: the run's settings, what an engine is handed, what it yields."""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

from common import defaults
from common.config import JobConfig
from common.errors import InputError
from pipeline.checkpoint import Checkpoint

ENGINES = ("local", "ray")
DECODES = ("auto", "cpu", "gpu", "both")


@dataclasses.dataclass(frozen=True)
class EmbedCatalogConfig(JobConfig):
    """Settings of one embed-catalog run (paths and flags that only steer the run are arguments)."""

    shard_size: int = defaults.SHARD_SIZE
    batch_size: int | None = None       # None: defaults.BATCH_SIZE_CPU, or BATCH_SIZE_GPU on CUDA
    workers: int | None = None          # local: DataLoader decode workers (None: jobs.workers.default_workers);
                                        # ray: embedding actors (None: one per GPU, or one on CPU)
    device: str = "auto"
    limit: int | None = None            # embed only the first N catalogue rows
    image_size: int | None = None       # None: the backbone's input size (smaller sizes are for tests)
    engine: str = "local"               # "local" (one process, DataLoader) or "ray" (Ray Data)
    ray_address: str | None = None      # ray: a cluster to join; None: RAY_ADDRESS, else a local instance
    num_gpus_per_worker: float = 0.0    # ray: GPUs each embedding actor holds (0: CPU actors)
    decode: str = "auto"                # local: "cpu" (Pillow in worker processes), "gpu" (JPEG batches on the
                                        # device), "both" (the two at once), "auto" (both on CUDA, else cpu)
    compile: bool = False               # torch.compile the backbone (its compile time is reported apart)
    trace: bool | None = None           # the backbone as a traced graph; None: jobs.backbone_graph.choose_graph
    jpeg_draft: bool = False            # decode large JPEGs DCT-scaled, down to twice the input size

    def __post_init__(self):
        for name, low in (("shard_size", 1), ("batch_size", 1), ("workers", 0), ("limit", 1), ("image_size", 8)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"{name.replace('_', '-')} must be an integer of at least {low}, got {value!r}")
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "ray" and self.workers == 0:
            raise InputError("--workers must be at least 1 with --engine ray (it is the number of embedding actors)")
        if not isinstance(self.num_gpus_per_worker, (int, float)) or self.num_gpus_per_worker < 0:
            raise InputError(f"num-gpus-per-worker must be >= 0, got {self.num_gpus_per_worker!r}")
        if self.engine == "local" and (self.ray_address or self.num_gpus_per_worker):
            raise InputError("--address and --num-gpus-per-worker need --engine ray")
        if self.decode not in DECODES:
            raise InputError(f"decode must be one of {', '.join(DECODES)}, got {self.decode!r}")
        if self.trace and self.compile:
            raise InputError("--trace and --compile are two ways to build the backbone's graph: choose one")
        if self.engine == "ray" and (self.decode in ("gpu", "both") or self.compile):
            raise InputError(f"--decode {self.decode} and --compile run with --engine local "
                             "(Ray actors decode on their CPUs)" if self.decode in ("gpu", "both")
                             else "--compile runs with --engine local")

    def decode_on(self, device: torch.device) -> str:
        """The decode path for this device: "cpu" (Pillow in worker processes), "gpu" (device decoding, Pillow
        threads for what the device decoder refuses) or "both" (the two at once, into one ordered stream)."""
        if self.decode == "auto":
            return "both" if device.type == "cuda" and self.engine == "local" else "cpu"
        return self.decode


@dataclasses.dataclass
class EmbedJob:
    """What an engine is handed: the catalogue, the model, and the rows still to embed."""

    table: pa.Table                 # the catalogue rows (product_id, category, image_path, extras as strings)
    rows: np.ndarray                # catalogue rows to decode and embed, ascending (int64)
    checkpoint: Checkpoint          # loaded in this process (its model: the local engine; its facts: every engine)
    checkpoint_path: Path
    size: int                       # network input size
    device: torch.device
    config: EmbedCatalogConfig
    backbone: Callable | None = None  # what runs the backbone's forward (a traced graph); None: the embedder's own
    traced: bool = False            # the engine traces the backbone itself (Ray actors: each its own graph)

    @property
    def paths(self) -> list[str]:
        return self.table.column("image_path").to_pylist()


class Embedded(NamedTuple):
    """One batch out of an engine: rows embedded (with their images' sha256) and rows rejected."""

    rows: list[int]
    embeddings: object | None       # (len(rows), d) float32: CPU tensor or array; None when every row was rejected
    ready: object | None            # a CUDA event to wait on before reading `embeddings`, or None
    rejects: list[tuple[int, str]]  # (row, reason)
    hashes: list[str]


class StaticBatch:
    """A fixed-shape input for a compiled backbone: every batch is copied into one buffer of `batch_size`
    rows, the rows past it left as they are; the caller keeps the first n rows of the result.

    A compiled backbone specialises on its input shape: the last, shorter batch (or one with rejects) made
    torch.compile recompile inside the timed run (on an H200: 8x slower than eager, docs/benchmarks-gpu.md).
    In eval mode every row's result depends on that row alone, so the padding never changes an embedding.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._buffer: torch.Tensor | None = None

    def fill(self, images: torch.Tensor) -> torch.Tensor:
        n = len(images)
        if n > self.batch_size:
            raise ValueError(f"a batch of {n} images does not fit the static batch of {self.batch_size}")
        shape = (self.batch_size, *images.shape[1:])
        if self._buffer is None or self._buffer.shape != shape or self._buffer.device != images.device:
            self._buffer = torch.zeros(shape, dtype=images.dtype, device=images.device).contiguous(
                memory_format=torch.channels_last)
        self._buffer[:n].copy_(images)
        return self._buffer


def forward(embedder, images: torch.Tensor, device: torch.device, static: StaticBatch | None = None, *,
            backbone: Callable | None = None) -> torch.Tensor:
    """Unit product embeddings of a uint8 image batch: channels_last; bf16 autocast for the backbone on CUDA,
    the heads in fp32; with `static`, the backbone sees the batch padded to its fixed size; `backbone` runs
    the backbone's forward instead of the embedder's own (its traced graph). Call under torch.inference_mode()."""
    backbone = embedder.backbone if backbone is None else backbone
    n = len(images)
    x = images.to(device, non_blocking=True)
    if static is not None:
        x = static.fill(x)
    x = x.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fmap = backbone(x)
    else:
        fmap = backbone(x)
    return embedder.product_from_features(fmap[:n])


def forward_to_host(embedder, images: torch.Tensor, device: torch.device, static: StaticBatch | None = None, *,
                    backbone: Callable | None = None) -> tuple[torch.Tensor, object]:
    """`forward`, then the copy of its result to the host: on CUDA started asynchronously, with the event
    that fires when it has landed (the writer waits on it, so the next batch's network need not)."""
    f_p = forward(embedder, images, device, static, backbone=backbone)
    if device.type != "cuda":
        return f_p, None
    embeddings = f_p.to("cpu", non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return embeddings, ready


def compile_backbone(embedder, device: torch.device, size: int, batch_size: int) -> float:
    """torch.compile the backbone's trunk in place and run one warm-up batch; return the seconds it took.

    The trunk, not the Backbone wrapper, so its name, input size and normalisation stay readable; the
    warm-up makes the compile happen here, reported apart from the steady-state rate. Static shapes: the
    engines pad every batch to `batch_size` (StaticBatch), so this one compile serves the whole run.
    """
    embedder.backbone.trunk = torch.compile(embedder.backbone.trunk, dynamic=False)
    warm = torch.zeros((batch_size, 3, size, size), dtype=torch.uint8)
    started = time.perf_counter()
    with torch.inference_mode():
        forward(embedder.eval().to(memory_format=torch.channels_last), warm, device, StaticBatch(batch_size))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far: one more after warm-up is a recompile."""
    utils = sys.modules.get("torch._dynamo.utils")    # loaded by torch.compile; never imported here: seconds
    return int(utils.counters["stats"]["unique_graphs"]) if utils is not None else 0


# An engine: open(job) does its set-up (worker processes, a cluster connection) and returns the batches.
Engine = Callable[[EmbedJob], Iterator[Embedded]]
