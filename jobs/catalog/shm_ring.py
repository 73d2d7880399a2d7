"""A ring of image-batch slots in anonymous shared memory: decode workers write pixels, the job reads them in place.

Each slot holds one batch of uint8 size x size x 3 images (channels last: a slot viewed as N x 3 x S x S
is already the network's channels_last layout, so neither side transposes). The memory is an anonymous
shared mapping made before the workers fork, so they inherit it: nothing is named, nothing lives in
/dev/shm, and nothing can leak however the job ends (the kernel frees it with the last process that maps
it; worker processes die with the job, see jobs.catalog.pillow_decoders). It is also not bounded by
/dev/shm's size, which containers often set to 64 MB. Workers and the job exchange slot numbers, never pixels.

On CUDA the ring can be page-locked (`pin`), so host-to-device copies from a slot are asynchronous; a slot
copied that way is free again once the copy's event has fired.
"""
from __future__ import annotations

import ctypes
import mmap
import threading
import time

import numpy as np
import torch

COPY_POLL = 0.001     # seconds between looks at pending copies' events


class SlotRing:
    """`slots` slots of `batch` images of size x size x 3 uint8, with a free list."""

    def __init__(self, slots: int, batch: int, size: int):
        if slots < 1 or batch < 1 or size < 1:
            raise ValueError(f"slots, batch and size must be positive, got {slots}, {batch}, {size}")
        self.slots, self.batch, self.size = slots, batch, size
        self.slot_bytes = batch * size * size * 3
        self._map = mmap.mmap(-1, slots * self.slot_bytes)    # MAP_SHARED | MAP_ANONYMOUS: inherited by fork
        self._array = np.frombuffer(self._map, dtype=np.uint8).reshape(slots, batch, size, size, 3)
        self._free = list(range(slots))
        self._pending: dict[int, object] = {}   # slot -> CUDA event its last copy recorded
        self._cond = threading.Condition()
        self._pinned_ptr: int | None = None

    def view(self, slot: int) -> np.ndarray:
        """The slot's pixels: batch x size x size x 3 (what a worker writes into)."""
        return self._array[slot]

    def images(self, slot: int, n: int) -> torch.Tensor:
        """The first n images of a slot as an N x 3 x S x S uint8 tensor (channels_last strides, no copy)."""
        return torch.from_numpy(self._array[slot, :n]).permute(0, 3, 1, 2)

    def acquire(self, timeout: float | None = None) -> int | None:
        """A free slot, waiting up to `timeout` seconds (None: no limit); None when none came free."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._collect_copied()
                if self._free:
                    return self._free.pop(0)
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                if self._pending:            # a copy's event fires without notifying: look again soon
                    wait = COPY_POLL if wait is None else min(wait, COPY_POLL)
                self._cond.wait(wait)

    def release(self, slot: int, after=None) -> None:
        """Give a slot back, at once or (`after`, a CUDA event) once the copy it guards has landed."""
        with self._cond:
            if after is None:
                self._free.append(slot)
            else:
                self._pending[slot] = after
            self._cond.notify_all()

    def _collect_copied(self) -> None:
        for slot, event in list(self._pending.items()):
            if event.query():
                del self._pending[slot]
                self._free.append(slot)

    def pin(self) -> bool:
        """Page-lock the ring for asynchronous copies to CUDA; False (and pageable copies) where that fails."""
        try:
            ptr = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
            if int(torch.cuda.cudart().cudaHostRegister(ptr, len(self._map), 0)) != 0:   # a cudaError_t
                return False
        except Exception:  # noqa: BLE001 - pinning is an optimisation: any failure means pageable copies
            return False
        self._pinned_ptr = ptr
        return True

    def close(self) -> None:
        """Unpin; the mapping itself goes with the last reference (tensors handed out may still view it)."""
        if self._pinned_ptr is not None:
            try:
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaHostUnregister(self._pinned_ptr)
            except Exception:  # noqa: BLE001 - the process is ending the run; nothing to recover
                pass
            self._pinned_ptr = None
