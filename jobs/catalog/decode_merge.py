"""Several decoders, one ordered stream: each batch goes to the decoder expected to finish it first, out in order.

embed-catalog's decoders (Pillow worker processes, the device's nvJPEG path) are *sides*: each runs
its own threads and, whenever it has room for another batch, asks `Merge.take` for the next one; it
hands the decoded batch back with `Merge.put`. The network's loop iterates the merge and gets the
batches in their order, whichever side decoded them, so the writer sees the same stream as with one
decoder: no row lost, repeated or moved, rejects carried with their batch.

The split adapts: a side may take the next batch only if no other side would finish it sooner, judged
from each side's recent time per batch (a moving average, the first batch of each side left out as its
warm-up) and the batches it already holds. A pure first-come split would let a side ten times slower
hold up the whole stream with every batch it grabbed; this one gives it a batch only when the faster
side is so busy that the slow one would still be earlier. A refused side is measured again now and
then (after PROBE of its own batch times, then twice as long while it stays slow), so one unlucky
batch does not bench it for the run; and no side runs more than MAX_AHEAD batches past the one the
network waits for, which bounds what piles up behind a slow batch.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

SMOOTHING = 0.3       # weight of the newest batch in a side's moving average of its time per batch
PROBE = 4             # a side refused this many of its own batch times takes one anyway, to be measured again
MAX_AHEAD = 8         # batches handed out past the one the network waits for: bounds what a fast side can
                      # pile up (on CUDA in device memory) while a slow side holds the next batch


@dataclass(frozen=True)
class Task:
    """One batch to decode: its place in the stream and its catalogue rows (ascending)."""

    index: int
    rows: np.ndarray


def plan_tasks(rows: np.ndarray, batch_size: int) -> list[Task]:
    """The run's rows cut into batches of `batch_size`, in order."""
    return [Task(i, rows[start:start + batch_size]) for i, start in enumerate(range(0, len(rows), batch_size))]


def _nothing() -> None:
    return None


@dataclass
class Decoded:
    """One decoded batch, from any side."""

    index: int
    rows: list[int]                  # catalogue rows of `images`, ascending
    images: object | None            # uint8 N x 3 x S x S tensor (host or device), None when all were rejected
    rejects: list[tuple[int, str]]   # (catalogue row, reason)
    hashes: list[str]                # sha256 of each image file in `rows`
    side: str
    ready: object | None = None      # a CUDA event to wait on before reading `images`, or None
    done: Callable[[], None] = field(default=_nothing)   # call once `images` has been consumed


@dataclass
class SideStats:
    """What one side did: batches and images taken, its time per batch (moving average, seconds)."""

    batches: int = 0
    images: int = 0
    seconds_per_batch: float | None = None
    in_flight: int = 0
    samples: int = 0
    last_put: float = float("-inf")
    refused_since: float | None = None
    probe_scale: float = 1.0          # doubles with every probe in a row: a side that stays slow is asked less


class MergeClosed(Exception):
    """The stream was closed (the consumer stopped or a side failed): a side's thread should stop."""


class Merge:
    """Hands batches to sides (`take`), collects them (`put`), yields them in order (iteration).

    Thread-safe; one consumer iterates. A side that fails calls `fail(exc)`: the consumer's iteration
    raises it, and every side's next `take` returns None.
    """

    def __init__(self, tasks: Sequence[Task], sides: Sequence[str], *, clock: Callable[[], float] = time.monotonic,
                 max_ahead: int = MAX_AHEAD):
        if len(set(sides)) != len(sides) or not sides:
            raise ValueError(f"sides must be distinct names, got {list(sides)}")
        if max_ahead < 1:
            raise ValueError(f"max_ahead must be at least 1, got {max_ahead}")
        self.tasks = list(tasks)
        self.max_ahead = max_ahead
        self.stats = {side: SideStats() for side in sides}
        self._clock = clock
        self._cond = threading.Condition()
        self._next_task = 0
        self._next_out = 0                 # the batch the consumer waits for
        self._taken_at: dict[int, tuple[str, float]] = {}
        self._finished: dict[int, Decoded] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._stopped: set[str] = set()

    # -- the sides' end ----------------------------------------------------------------------------

    def take(self, side: str, *, poll: float = 0.05) -> Task | None:
        """The next batch for `side` once it is the side expected to finish it first; None when none is left
        (or the stream was closed)."""
        with self._cond:
            while True:
                if self._closed or self._error is not None or self._next_task >= len(self.tasks):
                    self._stopped.add(side)
                    self._cond.notify_all()
                    return None
                if self._next_task - self._next_out < self.max_ahead and self._should_take(side):
                    task = self.tasks[self._next_task]
                    self._next_task += 1
                    stats = self.stats[side]
                    stats.batches += 1
                    stats.images += len(task.rows)
                    stats.in_flight += 1
                    self._taken_at[task.index] = (side, self._clock())
                    return task
                self._cond.wait(poll)

    def put(self, decoded: Decoded) -> None:
        """A side hands back a decoded batch (the one it took under `decoded.index`)."""
        with self._cond:
            side, taken = self._taken_at.pop(decoded.index)
            stats = self.stats[side]
            now = self._clock()
            if stats.samples > 0:            # the side's first batch is its warm-up: left out
                sample = now - max(taken, stats.last_put)
                old = stats.seconds_per_batch
                stats.seconds_per_batch = sample if old is None else (1 - SMOOTHING) * old + SMOOTHING * sample
            stats.samples += 1
            stats.last_put = now
            stats.in_flight -= 1
            self._finished[decoded.index] = decoded
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """A side failed: the consumer raises `exc`; the other sides stop taking."""
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def stopped(self, side: str) -> None:
        """A side will take no more batches (its threads are ending)."""
        with self._cond:
            self._stopped.add(side)
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed or self._error is not None

    def _estimate(self, side: str) -> float | None:
        """When `side` would finish one more batch, in seconds from now (None: not yet known)."""
        stats = self.stats[side]
        if stats.seconds_per_batch is None:
            return None
        return (stats.in_flight + 1) * stats.seconds_per_batch

    def _should_take(self, side: str) -> bool:
        stats = self.stats[side]
        mine = self._estimate(side)
        others = [self._estimate(o) for o in self.stats if o != side and o not in self._stopped]
        if mine is None or not any(theirs is not None and theirs < mine for theirs in others):
            stats.refused_since, stats.probe_scale = None, 1.0
            return True
        # Refused: but a side judged on one unlucky batch would never be measured again, so after a while
        # it takes one anyway (and waits twice as long before the next such probe).
        now = self._clock()
        if stats.refused_since is None:
            stats.refused_since = now
        elif now - stats.refused_since >= PROBE * stats.probe_scale * stats.seconds_per_batch:
            stats.refused_since = None
            stats.probe_scale *= 2
            return True
        return False

    # -- the consumer's end ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Decoded]:
        for index in range(len(self.tasks)):
            with self._cond:
                while index not in self._finished:
                    if self._error is not None:
                        raise self._error
                    if self._closed:
                        raise MergeClosed("the decode stream was closed")
                    if len(self._stopped) == len(self.stats) and index not in self._taken_at:
                        raise RuntimeError(f"every decoder stopped before batch {index} was taken")
                    self._cond.wait(0.5)
                decoded = self._finished.pop(index)
                self._next_out = index + 1
                self._cond.notify_all()
            yield decoded

    def close(self) -> None:
        """Stop handing out batches (the consumer is done or gave up); the sides' `take` returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
