"""Keep freed memory in the process's heap (glibc), so a batch job's forwards stop page-faulting it back in."""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1          # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks up to 32 MB come from the
# heap, which covers a CPU forward's activations at the jobs' batch of 4 (the largest, 4 x 32 x 112 x 112 floats,
# is 6.4 MB).
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where malloc is not glibc's.

    By default glibc hands large freed blocks back to the kernel (munmap, or a trim of the heap's top), so each
    forward of a batch job maps its activations afresh and page-faults them in: `ctl embed-catalog --limit 1000`
    on 2 cores made 3.7 million minor faults and spent 15 s in the kernel; with the freed memory kept, 0.15 million
    and 1.2 s, and 25 % less wall time (docs/benchmarks-embed.md). The price: the process's resident memory stays
    at its peak instead of shrinking after it, which a batch job does not miss.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not Linux, or musl: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and mmap_set
