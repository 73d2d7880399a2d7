"""The local embed-catalog engine: Pillow processes, the device or both decode into one stream; this process embeds.

`--decode` picks the sides of the merge (:mod:`jobs.catalog.decode_merge`): ``cpu`` the Pillow worker
processes writing into shared memory (:mod:`jobs.catalog.pillow_decoders`), ``gpu`` the device's
nvJPEG path (:mod:`jobs.catalog.device_side`), ``both`` the two at once, each batch going to the side
expected to finish it first (``auto``: both on CUDA, Pillow on CPU). This process runs the network on
the batches in catalogue order: on CUDA with bf16 autocast and channels_last, with `--compile` on
batches padded to one static shape.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import torch

from common import defaults
from jobs.catalog.decode_merge import Merge, plan_tasks
from jobs.catalog.device_side import DeviceDecoders, reader_threads
from jobs.catalog.embed_job import Embedded, EmbedJob, StaticBatch, compiled_graphs, forward_to_host
from jobs.catalog.pillow_decoders import PillowDecoders
from jobs.workers import default_workers

log = logging.getLogger(__name__)
# Reader threads of the device side when Pillow processes run beside it: they only read, hash and
# decode the odd file the device refuses; the cores belong to the Pillow processes.
READERS_BESIDE_PILLOW = 4


def pillow_workers(config_workers: int | None, device: torch.device) -> int:
    """Pillow decode processes: `--workers` when given; on CUDA all cores but two (the network's thread and
    the device side's), on CPU one per 8 cores (the network needs the rest: jobs.workers.default_workers)."""
    if config_workers is not None:
        return config_workers
    if device.type != "cuda":
        return default_workers("cpu")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus - 2)


class EngineRun:
    """The engine's batches, with a close() that stops the decoders even if iteration never began."""

    def __init__(self, batches: Iterator[Embedded], merge: Merge, sides: list):
        self._batches = batches
        self._merge = merge
        self._sides = sides

    def __iter__(self) -> EngineRun:
        return self

    def __next__(self) -> Embedded:
        return next(self._batches)

    def close(self) -> None:
        self._batches.close()
        self._merge.close()            # a generator never started skips its finally: stop the sides here
        for side in self._sides:
            side.close()


def open_engine(job: EmbedJob) -> EngineRun:
    """Start the decoders now (the Pillow processes fork before the caller starts its writer thread)."""
    cuda = job.device.type == "cuda"
    config = job.config
    batch_size = config.batch_size or (defaults.BATCH_SIZE_GPU if cuda else defaults.BATCH_SIZE_CPU)
    mode = config.decode_on(job.device)
    sides: list = []
    try:
        if mode in ("cpu", "both"):
            sides.append(PillowDecoders(job.paths, job.size, batch_size, pillow_workers(config.workers, job.device),
                                        device=job.device, draft=config.jpeg_draft, nice=not cuda))
        if mode in ("gpu", "both"):
            threads = (reader_threads(config.workers) if mode == "gpu"
                       else min(READERS_BESIDE_PILLOW, reader_threads(None)))
            sides.append(DeviceDecoders(job.paths, job.size, job.device, threads, draft=config.jpeg_draft))
        merge = Merge(plan_tasks(job.rows, batch_size), [side.name for side in sides])
        for side in sides:
            side.start(merge)
    except BaseException:
        for side in sides:
            side.close()
        raise
    static = StaticBatch(batch_size) if config.compile else None
    return EngineRun(_embed(job, merge, static), merge, sides)


def _embed(job: EmbedJob, merge: Merge, static: StaticBatch | None) -> Iterator[Embedded]:
    cuda = job.device.type == "cuda"
    embedder = job.checkpoint.embedder.eval().to(memory_format=torch.channels_last)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda or cudnn_benchmark     # fixed input shapes: let cuDNN pick
    graphs = compiled_graphs() if static is not None else 0
    try:
        with torch.inference_mode():
            for batch in merge:
                embeddings, ready = None, None
                if batch.images is not None:
                    images = batch.images
                    if batch.ready is not None:
                        stream = torch.cuda.current_stream(job.device)
                        stream.wait_event(batch.ready)
                        images.record_stream(stream)
                    embeddings, ready = forward_to_host(embedder, images, job.device, static, backbone=job.backbone)
                batch.done()
                yield Embedded(batch.rows, embeddings, ready, batch.rejects, batch.hashes)
        _report(merge, static, graphs)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        merge.close()


def _report(merge: Merge, static: StaticBatch | None, graphs: int) -> None:
    """Log how the decoding was split between the sides, and any recompile of a compiled backbone."""
    total = sum(s.images for s in merge.stats.values()) or 1
    split = {side: s.images for side, s in merge.stats.items()}
    log.info("decoded %s", ", ".join(f"{n} images on the {side} side ({100 * n / total:.0f} %)"
                                     for side, n in split.items()), extra={"decode_split": split})
    if static is not None and (recompiles := compiled_graphs() - graphs):
        log.warning("torch.compile compiled %d more graph(s) during the run: a recompile in the steady state",
                    recompiles, extra={"recompiles": recompiles})
