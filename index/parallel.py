"""Run one function over a list of keyword-argument dicts: in this process, in spawned processes, or as Ray tasks."""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

from tqdm import tqdm

from common.errors import InputError
from common.ray_cluster import connect, import_ray

MapFn = Callable[[Callable[..., dict], list[dict]], list[dict]]
INDEX_ENGINES = ("local", "ray")


def serial_map(fn, tasks: list[dict]) -> list[dict]:
    return [fn(**t) for t in tasks]


def process_map(workers: int) -> MapFn:
    """Up to `workers` spawned processes (fork would copy FAISS's OpenMP state, which hangs its threads)."""
    def run(fn, tasks):
        if workers <= 1 or len(tasks) <= 1:
            return serial_map(fn, tasks)
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(fn, **t) for t in tasks]
            # a bar of finished groups on a terminal (disable=None: off when stderr is not a TTY)
            for _ in tqdm(as_completed(futures), total=len(futures), desc="add shard groups", unit="group",
                          disable=None):
                pass
            return [f.result() for f in futures]
    return run


def ray_map(address: str | None, *, cpus_per_task: int) -> MapFn:
    """Ray tasks of `cpus_per_task` CPUs each, on the cluster at `address` (or RAY_ADDRESS, or a local instance)."""
    def run(fn, tasks):
        ray = import_ray()
        started = connect(address)
        try:
            remote = ray.remote(num_cpus=cpus_per_task, max_retries=2)(fn)
            refs = [remote.remote(**t) for t in tasks]
            pending = list(refs)
            with tqdm(total=len(refs), desc="add shard groups (ray)", unit="group", disable=None) as bar:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    bar.update(len(done))
            return ray.get(refs)
        finally:
            if started:
                ray.shutdown()
    return run


def make_map(engine: str, workers: int, *, address: str | None = None, threads: int = 1) -> MapFn:
    if engine not in INDEX_ENGINES:
        raise InputError(f"engine must be one of {', '.join(INDEX_ENGINES)}, got {engine!r}")
    if engine == "ray":
        return ray_map(address, cpus_per_task=threads)
    return process_map(workers)
