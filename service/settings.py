"""The service's settings, with the model executor's defaults chosen per device (docs/benchmarks-serve.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from common import defaults


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServeSettings:
    """How the service runs: the model executor, its queue, limits, index watching, admin token, examples."""

    threads: int = 1                  # torch threads of the model executor's forward of a lone scene
    batch_threads: int | None = None  # ... and of a batch of several (None: `threads`)
    max_batch: int = 1                # scenes per backbone forward (the executor batches what is waiting)
    pad_batches: bool = False         # pad each batch up to the next power of two (fixed shapes, warmed at start)
    decode_threads: int = 2           # threads decoding and resizing uploads beside the forward
    pipeline: bool = False            # stage 1 and 2 on a thread of their own, beside the next forward
    model_threads: int = 1            # model threads taking batches from the one queue (each its own forward)
    queue_size: int = defaults.SERVE_QUEUE_SIZE
    max_upload_bytes: int = defaults.SERVE_MAX_UPLOAD_BYTES
    max_k: int = defaults.SERVE_MAX_K
    max_candidates: int = defaults.SERVE_MAX_CANDIDATES
    watch_interval_s: float = defaults.SERVE_WATCH_SECONDS   # 0: do not watch the pointer
    reload_token: str | None = field(default=None, repr=False)   # None: POST /v1/admin/reload is disabled
    examples: tuple[Path, ...] = ()   # scene images the page offers as examples
    trace: bool = True                # run the backbone as a traced TorchScript graph (Retriever.trace_backbone)
    exact_decode: bool = False        # decode every upload in full (default: large JPEGs DCT-scaled, load_scene)

    @classmethod
    def for_device(cls, device: str | torch.device, **given) -> ServeSettings:
        """The measured defaults for `device`, overridden by every value in `given` that is not None.

        CPU: defaults.SERVE_CPU, one model thread per usable core, each forward on one torch thread (on 2
        cores less CPU per request and more throughput than one forward on both cores, whose OpenMP team
        waits and spins at every layer: docs/benchmarks-serve.md, 2026-12-05); an accelerator:
        defaults.SERVE_GPU (one model thread).
        """
        device = torch.device(device)
        if device.type == "cpu":
            base = {**defaults.SERVE_CPU, "threads": 1, "batch_threads": 1, "model_threads": usable_cores(),
                    "decode_threads": min(2, usable_cores())}
        else:
            base = {**defaults.SERVE_GPU, "decode_threads": max(2, min(8, usable_cores() // 2))}
        names = {f.name for f in fields(cls)}
        unknown = set(given) - names
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}")
        chosen = {**base, **{k: v for k, v in given.items() if v is not None}}
        return replace(cls(), **chosen)
