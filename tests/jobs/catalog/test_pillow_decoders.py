"""The Pillow side on shared memory: the CPU path's pixels and rejects through the slot ring, slots reused only once
read, and no shared memory or worker process left behind by an error, a dead worker or a killed job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from index.embedding_shards import MANIFEST
from jobs.catalog.decode_merge import Merge, plan_tasks
from jobs.catalog.pillow_decoders import PillowDecoders, chunk_size
from jobs.catalog.shm_ring import SlotRing
from pipeline.images import image_to_tensor, load_image
from tests.jobs.catalog.catalogs import ROOT, SIZE, make_bad_catalog, make_catalog

CPU = torch.device("cpu")


def catalog_paths(manifest: Path) -> tuple[list[str], list[str]]:
    table = pq.read_table(manifest)
    return ([str(manifest.parent / p) for p in table.column("image_path").to_pylist()],
            table.column("product_id").to_pylist())


def decode_all(paths, batch: int, workers: int):
    """Run the Pillow side alone over every row; returns the batches as (rows, pixels copied out, rejects)."""
    side = PillowDecoders(paths, SIZE, batch, workers, device=CPU)
    merge = Merge(plan_tasks(np.arange(len(paths)), batch), [side.name])
    side.start(merge)
    out = []
    try:
        for decoded in merge:
            images = None if decoded.images is None else decoded.images.clone()
            decoded.done()
            out.append((decoded.rows, images, decoded.rejects, decoded.hashes))
    finally:
        side.close()
    return out, side


@pytest.mark.parametrize("workers", [0, 2])
def test_the_pillow_side_gives_the_cpu_paths_pixels_and_rejects(tmp_path, workers):
    manifest, reasons = make_bad_catalog(tmp_path / "bad")
    good = make_catalog(tmp_path / "good", 9)
    paths, ids = catalog_paths(manifest)
    more, more_ids = catalog_paths(good)
    paths, ids = paths + more, ids + more_ids
    out, side = decode_all(paths, batch=5, workers=workers)
    rows = [r for batch_rows, _, _, _ in out for r in batch_rows]
    rejected = {ids[r]: reason for _, _, rejects, _ in out for r, reason in rejects}
    assert rows == [i for i, pid in enumerate(ids) if pid not in reasons]          # in order, none lost
    assert set(rejected) == set(reasons)
    for pid, reason in reasons.items():
        assert reason in rejected[pid], (pid, rejected[pid])
    for batch_rows, images, _, hashes in out:
        if batch_rows:
            assert images.shape == (len(batch_rows), 3, SIZE, SIZE) and len(hashes) == len(batch_rows)
        for i, row in enumerate(batch_rows):
            assert torch.equal(images[i], image_to_tensor(load_image(paths[row]), SIZE)), ids[row]
    assert all(not p.is_alive() for p in side.procs) and side.procs == []


def test_a_slot_view_is_channels_last_and_reused_only_once_released():
    ring = SlotRing(2, batch=3, size=4)
    a, b = ring.acquire(), ring.acquire()
    ring.view(a)[:] = 7
    images = ring.images(a, 2)
    assert images.shape == (2, 3, 4, 4) and images.is_contiguous(memory_format=torch.channels_last)
    assert images.data_ptr() == ring.view(a).ctypes.data and int(images.sum()) == 7 * 2 * 3 * 16   # no copy
    assert ring.acquire(timeout=0.05) is None                           # both slots held

    class Copy:                                                          # a CUDA event stand-in
        landed = False

        def query(self):
            return self.landed

    copy = Copy()
    ring.release(b, after=copy)
    assert ring.acquire(timeout=0.05) is None                           # the copy out of b has not landed
    copy.landed = True
    assert ring.acquire(timeout=5) == b
    ring.release(a)
    assert ring.acquire(timeout=5) == a


def test_chunks_spread_a_batch_over_the_workers():
    assert chunk_size(256, 14) == 19 and chunk_size(4, 2) == 2 and chunk_size(4, 0) == 4
    assert chunk_size(10_000, 2) == 64 and chunk_size(1, 16) == 1


class ExplodingPaths(list):
    """Catalogue paths whose row 5 cannot even be looked up: an error outside the per-image guard."""

    def __getitem__(self, i):
        if i == 5:
            raise MemoryError("row 5")
        return super().__getitem__(i)


def test_a_worker_error_ends_the_run_with_its_message_and_leaves_no_worker(tmp_path):
    paths, _ = catalog_paths(make_catalog(tmp_path / "cat", 12))
    side = PillowDecoders(ExplodingPaths(paths), SIZE, 4, 2, device=CPU)
    pids = [p.pid for p in side.procs]
    merge = Merge(plan_tasks(np.arange(len(paths)), 4), [side.name])
    side.start(merge)
    try:
        with pytest.raises(RuntimeError, match="decode worker failed: MemoryError: row 5"):
            list(merge)
    finally:
        side.close()
    assert len(pids) == 2 and not [pid for pid in pids if _alive(pid)]


def test_a_dead_worker_ends_the_run_instead_of_hanging(tmp_path):
    paths, _ = catalog_paths(make_catalog(tmp_path / "cat", 8))
    side = PillowDecoders(paths, SIZE, 4, 1, device=CPU)
    side.procs[0].kill()
    side.procs[0].join(timeout=10)
    merge = Merge(plan_tasks(np.arange(len(paths)), 4), [side.name])
    side.start(merge)
    try:
        with pytest.raises(RuntimeError, match=r"decode worker died \(exit code -9\)"):
            list(merge)
    finally:
        side.close()


# -- a killed job ----------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _shm_files(pid: int) -> set[str]:
    """Files under /dev/shm that process `pid` maps or holds open and that still have a name (the queues'
    semaphores are unlinked as soon as they are made: "(deleted)", gone with the last process)."""
    held = set()
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/dev/shm/") and not parts[5].endswith("(deleted)"):
                held.add(parts[5])
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/dev/shm/") and not target.endswith("(deleted)"):
                held.add(target)
    except OSError:
        pass
    return held


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_job_leaves_no_shared_memory_segment_and_no_worker(tmp_path, ckpt):
    manifest = make_catalog(tmp_path / "cat", 240, seed=3)
    out = tmp_path / "emb"
    shm_before = set(os.listdir("/dev/shm"))
    cmd = [sys.executable, "-m", "jobs.catalog.embed_catalog", "--manifest", str(manifest), "--checkpoint", str(ckpt),
           "--out", str(out), "--shard-size", "20", "--batch-size", "4", "--workers", "2", "--device", "cpu",
           "--image-size", str(SIZE), "--quiet"]
    log = tmp_path / "stderr.txt"       # a file, not a pipe: orphaned workers would hold a pipe open for ever
    with log.open("wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=stderr)
    workers, held = [], set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            finished = json.loads((out / MANIFEST).read_text())["shards"]
        except (FileNotFoundError, ValueError):
            finished = []
        if finished:                     # mid-run: the workers are decoding into the ring
            workers = _children(proc.pid)
            held = set().union(*(_shm_files(p) for p in [proc.pid, *workers]))
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    rc = proc.wait(timeout=60)
    assert rc == -signal.SIGKILL, f"the job ended before it could be killed (rc {rc}): {log.read_text()[-2000:]}"
    assert len(workers) >= 2, workers                       # the two decode processes were running
    assert held == set()                                   # the ring is anonymous: nothing named in /dev/shm
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.05)
    orphans = [p for p in workers if _alive(p)]
    for pid in orphans:                                     # never leave them running, even when failing
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "decode workers outlived the killed job"
    leaked = {name for name in set(os.listdir("/dev/shm")) - shm_before if str(proc.pid) in name}
    assert leaked == set()
