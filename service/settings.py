"""The service's settings, with the model-worker defaults chosen per device (docs/benchmarks-serve.md)."""
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
    """How the service runs: model workers, micro-batching, queue, limits, index watching, admin token, examples."""

    workers: int = 1                  # model worker threads
    threads: int = 1                  # torch threads per worker
    max_batch: int = 1                # scenes per backbone forward (1: no micro-batching)
    max_wait_ms: float = 0.0          # how long a worker waits to fill a batch
    queue_size: int = defaults.SERVE_QUEUE_SIZE
    max_upload_bytes: int = defaults.SERVE_MAX_UPLOAD_BYTES
    max_k: int = defaults.SERVE_MAX_K
    max_candidates: int = defaults.SERVE_MAX_CANDIDATES
    watch_interval_s: float = defaults.SERVE_WATCH_SECONDS   # 0: do not watch the pointer
    reload_token: str | None = field(default=None, repr=False)   # None: POST /v1/admin/reload is disabled
    examples: tuple[Path, ...] = ()   # scene images the page offers as examples
    trace: bool = True                # run the backbone as a traced TorchScript graph (Retriever.trace_backbone)

    @classmethod
    def for_device(cls, device: str | torch.device, **given) -> ServeSettings:
        """The measured defaults for `device`, overridden by every value in `given` that is not None.

        CPU: one worker per usable core, one torch thread each, no batching. GPU: defaults.SERVE_GPU.
        """
        device = torch.device(device)
        base = dict(defaults.SERVE_GPU) if device.type == "cuda" else {**defaults.SERVE_CPU, "workers": usable_cores()}
        names = {f.name for f in fields(cls)}
        unknown = set(given) - names
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}")
        chosen = {**base, **{k: v for k, v in given.items() if v is not None}}
        return replace(cls(), **chosen)
