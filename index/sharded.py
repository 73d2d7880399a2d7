"""Sharded add: copies of one trained empty index filled in parallel from groups of shards, then merged.

    trained empty index (one k-means, in the caller) -> K groups of contiguous shards
      -> each worker: read its shards (float32, as the single-process build does), add them with their
         global row ids, keep the exact top-k of the build's queries over them, write its part
      -> merge: IndexIVF.merge_from into the trained index (in memory), or OnDiskInvertedLists in a file
         beside index.faiss (`ondisk`), memory-mapped when the index is loaded

Each inverted list of the merged index holds group 0's entries, then group 1's, ... in row order: the
very lists the single-process build makes, so searches return the same answers. Workers are local
processes (spawned: FAISS's OpenMP does not survive fork) or Ray tasks (see index.parallel); on a
Ray cluster the embeddings folder and the index directory must be on a file system every node sees.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from index.embedding_shards import Manifest, iter_embeddings
from index.parallel import MapFn
from index.search import ivf_of

IVFDATA_SUFFIX = ".ivfdata"


def supports_sharded_add(index: faiss.Index) -> bool:
    """IVF indexes keep ids in their lists and merge list by list; Flat and HNSW do not."""
    return ivf_of(index) is not None and not isinstance(faiss.downcast_index(index), faiss.IndexIVFPQR)


def split_shards(manifest: Manifest, groups: int) -> list[tuple[Manifest, int]]:
    """Up to `groups` runs of contiguous shards with about equal rows: (sub-manifest, first global row)."""
    sizes = np.array([rows for _, rows in manifest.shards], dtype=np.int64)
    groups = max(1, min(groups, len(sizes)))
    ends = np.cumsum(sizes)
    # cut after the shard whose end is nearest each 1/groups of the rows
    cuts = sorted({int(np.argmin(np.abs(ends - manifest.n * g / groups))) + 1 for g in range(1, groups)})
    bounds = [0, *[c for c in cuts if 0 < c < len(sizes)], len(sizes)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            out.append((dataclasses.replace(manifest, shards=manifest.shards[a:b]), int(ends[a - 1]) if a else 0))
    return out


def add_group(trained_path: str, manifest: Manifest, first_row: int, out_path: str, xq: np.ndarray, k: int,
              threads: int) -> dict:
    """Worker: fill a copy of the trained index with one group's rows (ids = global rows) and write it to
    out_path; return the exact top-k (D, I) of xq over the group and the seconds it took."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    threads_before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, threads))   # run in-process by the serial map: restored below
    try:
        index = faiss.read_index(trained_path)
        heap = faiss.ResultHeap(len(xq), k, keep_max=True)
        for start, xb in iter_embeddings(manifest):
            ids = np.arange(first_row + start, first_row + start + len(xb), dtype=np.int64)
            index.add_with_ids(xb, ids)
            D, neighbours = faiss.knn(xq, xb, min(k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
            if neighbours.shape[1] < k:
                D = np.hstack([D, np.full((len(xq), k - neighbours.shape[1]), -np.inf, np.float32)])
                neighbours = np.hstack([neighbours, np.full((len(xq), k - neighbours.shape[1]), -1, np.int64)])
            heap.add_result(D, np.where(neighbours >= 0, neighbours + ids[0], -1))
        heap.finalize()
    finally:
        faiss.omp_set_num_threads(threads_before)
    faiss.write_index(index, out_path)
    return {"D": heap.D, "I": heap.I, "n": int(index.ntotal), "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), for the build report; None where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def sharded_add(index: faiss.Index, manifest: Manifest, xq: np.ndarray, k: int, *, work_dir: Path, groups: int,
                map_fn: MapFn, threads: int, ondisk_path: Path | None = None) -> tuple[np.ndarray, dict]:
    """Fill the trained empty `index` in place from `groups` parallel workers; return the exact top-k of xq
    over every row (ids = rows) and phase timings. With `ondisk_path`, the lists go to that file."""
    if index.ntotal:
        raise ValueError("sharded_add needs a trained, empty index")
    parts_dir = work_dir / ".parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    try:
        trained = parts_dir / "trained.faiss"
        faiss.write_index(index, str(trained))
        plan = split_shards(manifest, groups)
        tasks = [{"trained_path": str(trained), "manifest": sub, "first_row": first,
                  "out_path": str(parts_dir / f"group-{g:04d}.faiss"), "xq": xq, "k": k, "threads": threads}
                 for g, (sub, first) in enumerate(plan)]
        t0 = time.perf_counter()
        results = map_fn(add_group, tasks)
        t_add = time.perf_counter() - t0
        heap = faiss.ResultHeap(len(xq), k, keep_max=True)
        for r in results:
            heap.add_result(r["D"], r["I"])
        heap.finalize()
        I_ref = heap.I.copy()
        I_ref[~np.isfinite(heap.D)] = -1
        t0 = time.perf_counter()
        parts = [t["out_path"] for t in tasks]
        if ondisk_path is not None:
            merge_ondisk(index, parts, ondisk_path)
        else:
            merge_in_memory(index, parts)
        timings = {"add_seconds": round(t_add, 3), "merge_seconds": round(time.perf_counter() - t0, 3),
                   "groups": len(tasks), "group_seconds": [round(r["seconds"], 3) for r in results],
                   "group_cpu_seconds": [round(r["cpu_seconds"], 3) for r in results],
                   "group_peak_rss_mb": [r["peak_rss_mb"] for r in results]}
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    if index.ntotal != manifest.n:
        raise RuntimeError(f"merged index holds {index.ntotal} vectors, the shards {manifest.n}")
    return I_ref, timings


def merge_in_memory(index: faiss.Index, parts: list[str]) -> None:
    """Append each part's inverted lists to the index's, in order (ids kept).

    The parts are memory-mapped and copied list by list, so a part is never held in RAM beside the
    index (IndexIVF.merge_from would also empty the part's lists, which a mapped file refuses)."""
    ivf = ivf_of(index)
    for path in parts:
        part = faiss.read_index(path, faiss.IO_FLAG_MMAP)
        src = ivf_of(part).invlists
        for lst in range(ivf.nlist):
            size = src.list_size(lst)
            if size:
                ivf.invlists.add_entries(lst, size, src.get_ids(lst), src.get_codes(lst))
        del part
    ivf.ntotal = index.ntotal = sum(ivf.invlists.list_size(lst) for lst in range(ivf.nlist))


def merge_ondisk(index: faiss.Index, parts: list[str], ivfdata: Path) -> None:
    """Merge the parts' lists into OnDiskInvertedLists stored in `ivfdata` (after faiss.contrib.ondisk)."""
    ivf = ivf_of(index)
    sources, keep = faiss.InvertedListsPtrVector(), []
    for path in parts:
        part = faiss.read_index(path, faiss.IO_FLAG_MMAP)   # mapped: the lists may exceed RAM
        part_ivf = ivf_of(part)
        keep.append(part)
        sources.push_back(part_ivf.invlists)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    ntotal = lists.merge_from_multiple(sources.data(), sources.size(), False)
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    index.ntotal = ivf.ntotal = ntotal
    del keep
