"""Keep freed memory in the process's heap (glibc), so a batch job's or a server's forwards stop faulting it in."""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1          # glibc's mallopt parameters (malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks up to 32 MB come from the
# heap, which covers a CPU forward's activations at the jobs' batch of 4 (the largest, 4 x 32 x 112 x 112 floats,
# is 6.4 MB).
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2**30
# A thread's arena (every thread but the main one mallocs from its own) grows in heaps of at most 64 MB (glibc's
# HEAP_MAX_SIZE on 64-bit); a block that does not fit gets a new heap, and once it is freed glibc deletes that heap
# whole whatever the trim threshold says; it keeps it only when the heap before could not then hold the top pad,
# which a pad of a whole heap makes always so. Without it a server's model threads mapped, faulted in and unmapped
# an 18.5 MB heap for the batch of 4's widest activation (4 x 96 x 112 x 112 floats) at every forward, 4 to 11 ms
# of kernel time a request at concurrency 16 and 64 (strace and /proc; docs/benchmarks-serve.md, eighth session).
TOP_PAD_BYTES = 64 * 2**20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and its top pad for this process; False where malloc is not glibc's.

    By default glibc hands large freed blocks back to the kernel (munmap, or a trim of the heap's top), so each
    forward of a batch job maps its activations afresh and page-faults them in: `ctl embed-catalog --limit 1000`
    on 2 cores made 3.7 million minor faults and spent 15 s in the kernel; with the freed memory kept, 0.15 million
    and 1.2 s, and 25 % less wall time (docs/benchmarks-embed.md). `ctl serve` does the same by default: its model
    threads' forwards page-faulted too once batches of 4 ran (TOP_PAD_BYTES). The price: the process's resident
    memory stays at its peak instead of shrinking after it, which a batch job does not miss and a server under load
    reaches anyway (`ctl serve --release-freed-memory` for one that must shrink between bursts).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not Linux, or musl: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    pad_set = bool(mallopt(M_TOP_PAD, TOP_PAD_BYTES))
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and mmap_set and pad_set
