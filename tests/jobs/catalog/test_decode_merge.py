"""The ordered merge of several decoders, with fake decoders: nothing lost, repeated or moved, rejects kept, the split
following the faster decoder, a failing decoder or an early stop ending the stream cleanly."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from jobs.catalog.decode_merge import Decoded, Merge, Task, plan_tasks


class FakeDecoder:
    """A side that "decodes" a row into an image holding its row number, rejects rows divisible by 7, and takes
    `delay` seconds per batch (a real wait, so the merge measures a real speed)."""

    def __init__(self, name: str, delay: float, *, fail_on: int | None = None):
        self.name, self.delay, self.fail_on = name, delay, fail_on     # fail on its fail_on-th batch
        self.thread: threading.Thread | None = None

    def start(self, merge: Merge) -> None:
        self.thread = threading.Thread(target=self._run, args=(merge,), daemon=True)
        self.thread.start()

    def _run(self, merge: Merge) -> None:
        try:
            taken = 0
            while (task := merge.take(self.name, poll=0.005)) is not None:
                taken += 1
                if taken == self.fail_on:
                    raise OSError(f"{self.name} broke on its batch {taken}")
                time.sleep(self.delay)
                good = [int(r) for r in task.rows if r % 7]
                merge.put(Decoded(task.index, good, torch.tensor(good) if good else None,
                                  [(int(r), f"bad {r}") for r in task.rows if r % 7 == 0],
                                  [f"sha{r}" for r in good], self.name))
        except BaseException as exc:  # noqa: BLE001 - as a real side does
            merge.fail(exc)
        finally:
            merge.stopped(self.name)


def run_merge(n_rows: int, batch: int, decoders: list[FakeDecoder]) -> tuple[list[Decoded], Merge]:
    merge = Merge(plan_tasks(np.arange(n_rows), batch), [d.name for d in decoders])
    for d in decoders:
        d.start(merge)
    out = list(merge)
    for d in decoders:
        d.thread.join(timeout=10)
        assert not d.thread.is_alive()
    return out, merge


def assert_the_stream_is_whole_and_ordered(out: list[Decoded], n_rows: int, batch: int) -> None:
    assert [d.index for d in out] == list(range(len(out)))
    rows = [r for d in out for r in d.rows]
    rejected = [r for d in out for r, _ in d.rejects]
    assert rows == [r for r in range(n_rows) if r % 7]                     # none lost, repeated or moved
    assert rejected == list(range(0, n_rows, 7))                           # every reject kept, in order
    assert all(reason == f"bad {r}" for d in out for r, reason in d.rejects)
    for d in out:                                                          # each batch kept its own rows
        assert all(r // batch == d.index for r in [*d.rows, *(r for r, _ in d.rejects)])
        if d.rows:
            assert d.images.tolist() == d.rows and d.hashes == [f"sha{r}" for r in d.rows]


def test_plan_tasks_cuts_the_rows_into_ordered_batches():
    tasks = plan_tasks(np.arange(10, 21), 4)
    assert [t.index for t in tasks] == [0, 1, 2]
    assert [t.rows.tolist() for t in tasks] == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20]]
    assert plan_tasks(np.zeros(0, np.int64), 4) == []


def test_two_decoders_share_the_work_into_one_ordered_stream():
    out, merge = run_merge(203, 4, [FakeDecoder("pillow", 0.002), FakeDecoder("device", 0.002)])
    assert_the_stream_is_whole_and_ordered(out, 203, 4)
    assert min(s.batches for s in merge.stats.values()) >= 1           # both decoded
    assert sum(s.images for s in merge.stats.values()) == 203


@pytest.mark.parametrize("slow", ["pillow", "device"])
def test_the_split_follows_the_decoder_that_keeps_up(slow):
    fast = "device" if slow == "pillow" else "pillow"
    out, merge = run_merge(240, 4, [FakeDecoder(slow, 0.05), FakeDecoder(fast, 0.001)])
    assert_the_stream_is_whole_and_ordered(out, 240, 4)
    # 50x slower: a first-come split would give it about half the batches; it gets its warm-up batch and
    # the one that measured it, then only what the fast side could not finish sooner.
    assert merge.stats[slow].batches <= 6, {s: v.batches for s, v in merge.stats.items()}
    assert merge.stats[slow].seconds_per_batch > 5 * merge.stats[fast].seconds_per_batch


def test_a_decoder_estimated_slower_waits_while_the_other_would_finish_first():
    now = [0.0]
    merge = Merge([Task(i, np.array([i])) for i in range(6)], ["slow", "fast"], clock=lambda: now[0])

    def timed(side: str, seconds: float) -> None:
        task = merge.take(side)
        now[0] += seconds
        merge.put(Decoded(task.index, [task.index], None, [], [], side))

    for _ in range(2):                       # the first batch of each side is its warm-up, the second its speed
        timed("slow", 1.0)
        timed("fast", 0.1)
    assert merge.stats["slow"].seconds_per_batch == pytest.approx(1.0)
    assert merge.stats["fast"].seconds_per_batch == pytest.approx(0.1)
    took: list = []
    taken = threading.Event()
    waiter = threading.Thread(target=lambda: (took.append(merge.take("slow", poll=0.01)), taken.set()), daemon=True)
    waiter.start()
    assert not taken.wait(0.2)               # fast would finish batch 4 in 0.1 s, slow in 1 s: slow waits
    timed("fast", 0.1)                       # fast took batch 4
    merge.stopped("fast")                    # and leaves: the last batch may go to slow
    assert taken.wait(5) and took[0].index == 5
    merge.put(Decoded(5, [5], None, [], [], "slow"))
    assert [d.index for d in merge] == list(range(6))


def test_a_refused_decoder_is_measured_again_later_and_less_often_while_it_stays_slow():
    now = [0.0]
    merge = Merge([Task(i, np.array([i])) for i in range(20)], ["slow", "fast"], clock=lambda: now[0])

    def timed(side: str, seconds: float) -> None:
        task = merge.take(side)
        now[0] += seconds
        merge.put(Decoded(task.index, [task.index], None, [], [], side))

    def waiting_take(side: str):
        got, done = [], threading.Event()
        threading.Thread(target=lambda: (got.append(merge.take(side, poll=0.01)), done.set()), daemon=True).start()
        return got, done

    for _ in range(2):
        timed("slow", 1.0)
        timed("fast", 0.1)
    got, done = waiting_take("slow")
    assert not done.wait(0.2)                # refused: fast would be sooner
    now[0] += 3.9
    assert not done.wait(0.2)                # still inside 4 of its batch times
    now[0] += 0.2
    assert done.wait(5) and got[0].index == 4               # a probe: measured again
    now[0] += 1.0
    merge.put(Decoded(4, [4], None, [], [], "slow"))       # still slow
    got, done = waiting_take("slow")
    assert not done.wait(0.2)
    now[0] += 4.1
    assert not done.wait(0.2)                # the next probe waits twice as long
    now[0] += 4.0
    assert done.wait(5) and got[0].index == 5


def test_a_fast_decoder_runs_at_most_max_ahead_batches_past_a_held_one():
    merge = Merge(plan_tasks(np.arange(100), 1), ["held", "fast"], max_ahead=5)
    first = merge.take("held")                         # batch 0, held until released below
    fast = FakeDecoder("fast", 0.0)
    fast.start(merge)
    deadline = time.monotonic() + 10
    while merge.stats["fast"].batches < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert merge.stats["fast"].batches == 4            # batches 1-4: five handed out past the one awaited
    assert not fast.thread.join(0.2) and merge.stats["fast"].batches == 4   # and no more while 0 is held
    merge.stopped("held")
    merge.put(Decoded(first.index, [], None, [(0, "bad 0")], [], "held"))
    out = list(merge)
    fast.thread.join(timeout=10)
    assert_the_stream_is_whole_and_ordered(out, 100, 1)
    assert merge.stats["fast"].batches == 99


def test_a_failing_decoder_ends_the_stream_with_its_error_and_stops_the_other():
    good, broken = FakeDecoder("pillow", 0.001), FakeDecoder("device", 0.001, fail_on=2)
    merge = Merge(plan_tasks(np.arange(400), 4), ["pillow", "device"])
    for d in (good, broken):
        d.start(merge)
    with pytest.raises(OSError, match="device broke on its batch 2"):
        list(merge)
    for d in (good, broken):
        d.thread.join(timeout=10)
        assert not d.thread.is_alive()
    assert merge.take("pillow") is None


def test_closing_the_stream_early_stops_the_decoders():
    decoders = [FakeDecoder("pillow", 0.001), FakeDecoder("device", 0.001)]
    merge = Merge(plan_tasks(np.arange(4000), 4), [d.name for d in decoders])
    for d in decoders:
        d.start(merge)
    stream = iter(merge)
    first = [next(stream) for _ in range(3)]
    merge.close()
    for d in decoders:
        d.thread.join(timeout=10)
        assert not d.thread.is_alive()
    assert [d.index for d in first] == [0, 1, 2]
    assert sum(s.batches for s in merge.stats.values()) < 1000


def test_the_merge_refuses_duplicate_or_missing_side_names():
    with pytest.raises(ValueError, match="distinct"):
        Merge([], ["pillow", "pillow"])
    with pytest.raises(ValueError, match="distinct"):
        Merge([], [])
