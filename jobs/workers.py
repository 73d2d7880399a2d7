"""DataLoader worker policy shared by the jobs that decode images next to a network on the same CPU."""
from __future__ import annotations

import contextlib
import os


def lower_priority(worker_id: int) -> None:
    """On CPU, decode workers yield to the network's intra-op threads: a preempted intra-op thread stalls
    the others at the next barrier, while decoding keeps several batches of slack (prefetch)."""
    with contextlib.suppress(OSError):
        os.nice(10)


def default_workers(device_type: str) -> int:
    """DataLoader workers: min(4, cpu count) on a GPU; on CPU, decoding competes with the network's
    own threads, so use one worker per 8 cores (at least one)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device_type == "cuda":
        return min(4, cpus)
    return max(1, min(4, cpus // 8))
