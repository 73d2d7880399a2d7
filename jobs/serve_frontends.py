"""`ctl serve --frontends N`: one model process holding the device, N front-end processes answering on one socket.

The model process (this one) loads the checkpoint on the device, traces and warms the backbone, and runs a
ForwardServer (service/shared_forward.py). Each front end is a spawned process running the whole service
(routes, page, metrics, hot swap of the index, its own executor, decode pool, stage 1 and stage 2 on the CPU)
over the inherited listening socket, with `Retriever.use_forward` sending its forwards to the model process.
What each front end keeps for itself: its queue (so `--queue-size` is per front end), its index watcher (each
follows the index directory's pointer; an admin reload reaches the front end that took it, the others at their
next read of the pointer). /metrics, whichever front end answers it, sums them all (service/metrics.py). The
address is printed once every front end is ready.
SIGTERM or SIGINT stops the front ends first (each answers what it has admitted, through the model process),
then the model process; a front end that dies stops the whole server with an error, for a supervisor to restart.
"""
from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import replace
from multiprocessing.connection import wait
from pathlib import Path

import click
import torch
import uvicorn

from common.errors import CtlError
from retrieval.retriever import Retriever
from service.app import create_app
from service.executor import power_buckets
from service.metrics import MULTIPROCESS_DIR
from service.settings import ServeSettings
from service.shared_forward import ForwardServer, ForwardShape, RemoteForward, SlotHandle

log = logging.getLogger("ctl.serve")
FRONTEND_STOP_SECONDS = 30.0


class FrontendExited(CtlError):
    """A front-end process ended while the server ran: the server stops (exit 1) for a supervisor to restart."""


def freeze_heap() -> None:
    """Move everything loaded so far (model, index, app: ~400,000 objects) out of the collector's sight.

    Python's cyclic collector otherwise walks them all at every full collection: 170 ms holding the GIL,
    every thread of the server stalled (measured with the synthetic catalogue on 2 busy cores; ~0 ms after
    the freeze). A request's own objects are still collected as usual. Once per process, after loading and
    before the first request (the collection first: no garbage is frozen).
    """
    gc.collect()
    gc.freeze()


def frontend_settings(settings: ServeSettings) -> ServeSettings:
    """A front end's settings: its forwards go to the model process, which traces and pads (so neither here);
    stage 1 and 2 on one torch thread."""
    return replace(settings, trace=False, pad_batches=False, threads=1, batch_threads=1)


def warm_forward(retriever: Retriever, buckets: tuple[int, ...]) -> float:
    """Every padded batch shape through the model process's forward once (cuDNN tunes each here); seconds taken."""
    start = time.perf_counter()
    size = retriever.input_size
    if retriever.device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # fixed shapes: each tuned once, here (as ModelExecutor does)
    for rows in buckets or (1,):
        retriever.encode_pixels(torch.zeros((1, 3, size, size), dtype=torch.uint8), pad_to=rows)
    if retriever.device.type == "cuda":
        torch.cuda.synchronize(retriever.device)
    return time.perf_counter() - start


def serve_with_frontends(sock: socket.socket, retriever: Retriever, index_dir: Path, checkpoint: Path,
                         settings: ServeSettings, frontends: int, *, log_level: str, access_log: bool,
                         stage1: str, announce) -> None:
    """Run the model process and `frontends` front ends until SIGTERM / SIGINT; `announce()` once all are ready."""
    if settings.trace:
        retriever.trace_backbone()
    buckets = power_buckets(settings.max_batch) if settings.pad_batches else ()
    warm_s = warm_forward(retriever, buckets)
    log.info("model process warm: batch shapes %s in %.1f s", list(buckets) or "unpadded", warm_s)
    shape = ForwardShape.of(retriever.encode_pixels, rows=settings.max_batch, size=retriever.input_size)
    front = frontend_settings(settings)
    about = {"pid": os.getpid(), "device": str(retriever.device), "traced": retriever.traced,
             "forward_threads": settings.model_threads, "max_batch": settings.max_batch, "buckets": list(buckets),
             "warm_up_seconds": round(warm_s, 3), "frontends": frontends}
    forward_threads = settings.batch_threads or settings.threads
    server = ForwardServer(retriever.encode_pixels, shape, frontends=frontends, slots=front.model_threads + 1,
                           threads=settings.model_threads, buckets=buckets,
                           on_thread_start=lambda: torch.set_num_threads(forward_threads))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes: list[multiprocessing.process.BaseProcess] = []
    # The front ends' metrics, summed at each scrape (service/metrics.py); read from the environment when each
    # front end imports prometheus_client, so set before they are spawned.
    metrics_dir = tempfile.mkdtemp(prefix="ctl-serve-metrics-")
    previous_dir = os.environ.get(MULTIPROCESS_DIR)
    os.environ[MULTIPROCESS_DIR] = metrics_dir
    try:
        freeze_heap()
        server.start()
        context = multiprocessing.get_context("spawn")   # no fork of a process holding threads and a device
        ready = [context.Event() for _ in range(frontends)]
        for number in range(frontends):
            process = context.Process(
                target=run_frontend, name=f"ctl-serve-frontend-{number}",
                args=(number, sock, server.handles[number], index_dir, checkpoint, front, log_level, access_log,
                      stage1, ready[number], about))
            process.start()
            processes.append(process)
        while not all(event.is_set() for event in ready):
            _fail_if_one_exited(processes)
            if stop.wait(0.1):
                return
        announce()
        while not stop.is_set():
            wait([p.sentinel for p in processes], timeout=0.5)
            _fail_if_one_exited(processes)
    finally:
        _stop_frontends(processes)
        server.close()
        if previous_dir is None:
            os.environ.pop(MULTIPROCESS_DIR, None)
        else:
            os.environ[MULTIPROCESS_DIR] = previous_dir
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail_if_one_exited(processes) -> None:
    for process in processes:
        if process.exitcode is not None:
            raise FrontendExited(f"front-end process {process.name} exited with code {process.exitcode} "
                             "(its log is above); the server stops")


def _stop_frontends(processes) -> None:
    """SIGTERM to every front end (uvicorn answers what it admitted, then exits), SIGKILL to any still there."""
    for process in processes:
        if process.exitcode is None:
            process.terminate()
    deadline = time.monotonic() + FRONTEND_STOP_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.warning("front-end process %s did not stop in %.0f s: killed", process.name, FRONTEND_STOP_SECONDS)
            process.kill()
            process.join()


def _exit_when_orphaned(parent: int) -> None:
    """A front end whose model process died would answer 503 forever: stop it instead (as SIGTERM does)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _signal_when_ready(app, ready) -> None:
    executor = app.state.service.executor
    while not executor.ready:
        time.sleep(0.05)
    ready.set()


def run_frontend(number: int, sock: socket.socket, handles: list[SlotHandle], index_dir: Path, checkpoint: Path,
                 settings: ServeSettings, log_level: str, access_log: bool, stage1: str, ready, about: dict) -> None:
    """A front-end process: the whole service on the CPU, its forwards through the model process."""
    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s[frontend {number}]: %(message)s")
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), name="orphan-watch", daemon=True).start()
    torch.set_num_threads(1)
    remote = RemoteForward(handles)
    try:
        retriever = Retriever.load(checkpoint=checkpoint, index_dir=index_dir, device="cpu", stage1=stage1)
        retriever.use_forward(remote.encode_pixels, about={**about, "frontend": number})
        retriever.drop_backbone()
        app = create_app(retriever, index_dir, settings)
    except Exception as exc:  # noqa: BLE001 - one line for the log; the model process stops the server
        click.echo(f"error: front end {number}: {exc}", err=True)
        raise SystemExit(1) from None
    freeze_heap()
    threading.Thread(target=_signal_when_ready, args=(app, ready), name="ready-signal", daemon=True).start()
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=15,
                            lifespan="on", server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        remote.close()
