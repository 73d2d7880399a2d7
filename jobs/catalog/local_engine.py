"""The local embed-catalog engine: DataLoader workers decode, this process embeds (CPU, or CUDA with bf16 autocast)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from common import defaults
from jobs.catalog.catalog_images import CatalogImages, collate
from jobs.catalog.embed_job import Embedded, EmbedJob, forward_to_host
from jobs.workers import default_workers, lower_priority


def open_engine(job: EmbedJob) -> Iterator[Embedded]:
    """Start the decode workers now (they fork before the caller starts its writer thread); return the batches."""
    cuda = job.device.type == "cuda"
    config = job.config
    batch_size = config.batch_size or (defaults.BATCH_SIZE_GPU if cuda else defaults.BATCH_SIZE_CPU)
    workers = default_workers(job.device.type) if config.workers is None else config.workers
    loader = DataLoader(
        CatalogImages(job.paths, job.rows, job.size), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate, pin_memory=cuda, prefetch_factor=4 if workers else None,
        persistent_workers=False, worker_init_fn=None if cuda else lower_priority,
    )
    batches = iter(loader)
    return _embed(job, batches)


def _embed(job: EmbedJob, batches) -> Iterator[Embedded]:
    cuda = job.device.type == "cuda"
    embedder = job.checkpoint.embedder.eval().to(memory_format=torch.channels_last)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda or cudnn_benchmark     # fixed input shapes: let cuDNN pick
    try:
        with torch.inference_mode():
            for batch in batches:
                embeddings, ready = None, None
                if batch.images is not None:
                    embeddings, ready = forward_to_host(embedder, batch.images, job.device)
                yield Embedded(batch.rows, embeddings, ready, batch.rejects, batch.hashes)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        del batches                    # shuts the DataLoader workers down
