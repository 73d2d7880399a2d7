"""`ctl serve`: the HTTP API and the page over one index and checkpoint, loaded once, answering many."""
from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import click
import torch
import uvicorn

from common import defaults
from common.allocator import keep_freed_memory
from common.devices import DEVICE_PATTERN, resolve_device
from common.errors import ArtifactError, InputError
from jobs.cli_errors import OneLineCommand, release_logs
from jobs.data.datasets import load_dataset
from jobs.serve_frontends import freeze_heap, serve_with_frontends
from jobs.training.run_layout import RunLayout
from retrieval.retriever import Retriever
from service.app import create_app
from service.settings import ServeSettings
from service.state import SAMPLE_MODEL_NOTICE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
MAX_EXAMPLES = 12
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def run_examples(checkpoint: Path, limit: int = MAX_EXAMPLES) -> tuple[Path, ...]:
    """The held-out test scenes of the run that trained `checkpoint` (its folder's split.json and config.json),
    or none when that run's data is not here. Never training scenes: the page should show what the model
    makes of scenes it has not seen."""
    run = RunLayout.of_checkpoint(checkpoint)
    try:
        test = sorted(run.read_split().test)
        data = Path(run.read_config()["data"])
        scenes = load_dataset(data).scenes
    except (OSError, ValueError, KeyError, TypeError, ArtifactError):
        return ()
    return tuple(scenes[sid] for sid in test if sid in scenes and Path(scenes[sid]).is_file())[:limit]


def folder_examples(folder: Path, limit: int = MAX_EXAMPLES) -> tuple[Path, ...]:
    if not folder.is_dir():
        raise InputError(f"--examples {folder}: not a folder (give a folder of scene images, 'auto' or 'none')")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return tuple(found[:limit])


def resolve_examples(option: str, checkpoint: Path) -> tuple[Path, ...]:
    if option == "none":
        return ()
    if option == "auto":
        return run_examples(checkpoint)
    return folder_examples(Path(option))


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), so the address printed is the one in use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP, and
    # without it a keep-alive answer written in two parts waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def device_name(ctx, param, value: str) -> str:
    if not DEVICE_PATTERN.fullmatch(value):
        raise click.BadParameter(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


@click.command("serve", cls=OneLineCommand)
@click.option("--index-dir", type=click.Path(path_type=Path), default=defaults.INDEX_DIR, show_default=True,
              help="index directory (its CURRENT build is served, and watched for new ones)")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=defaults.CHECKPOINT, show_default=True)
@click.option("--host", default=defaults.SERVE_HOST, show_default=True,
              help="address to listen on; anything but loopback makes the API reachable from other machines")
@click.option("--port", type=click.IntRange(0, 65535), default=defaults.SERVE_PORT, show_default=True,
              help="0 picks a free port (printed at start)")
@click.option("--device", default="auto", show_default=True, callback=device_name, help="auto, cpu, cuda or cuda:N")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads of the forward of a lone scene [default: 1]")
@click.option("--batch-threads", type=click.IntRange(min=1), default=None,
              help="torch threads of the forward of a batch of several [default: 1]")
@click.option("--model-threads", type=click.IntRange(min=1), default=None,
              help="model threads taking batches from the queue, each running its own forward [default: CPU "
                   "every usable core, GPU 1]")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="most scenes per backbone forward: the executor batches what is waiting, never waits for "
                   "more [default: CPU 4, GPU 64]")
@click.option("--pad-batches/--no-pad-batches", default=None,
              help="pad each batch to a power of two (fixed shapes, each warmed before /readyz says ready) "
                   "[default: on a GPU]")
@click.option("--decode-threads", type=click.IntRange(min=1), default=None,
              help="threads decoding and resizing uploads beside the forward [default: CPU 2, GPU cores/2 up to 8]")
@click.option("--pipeline/--no-pipeline", default=None,
              help="stage 1 and 2 on a thread of their own, beside the next forward [default: on a GPU]")
@click.option("--queue-size", type=click.IntRange(min=1), default=defaults.SERVE_QUEUE_SIZE, show_default=True,
              help="scene queries that may wait for a worker; more are answered 503 with Retry-After")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True),
              default=defaults.SERVE_MAX_UPLOAD_BYTES / 2**20, show_default=True,
              help="largest scene upload in MiB (413 above)")
@click.option("--watch-interval", type=click.FloatRange(min=0), default=defaults.SERVE_WATCH_SECONDS,
              show_default=True, help="seconds between reads of the index directory's pointer (0: do not watch)")
@click.option("--reload-token", envvar="CTL_RELOAD_TOKEN", default=None, show_envvar=True,
              help="enables POST /v1/admin/reload for clients sending 'Authorization: Bearer TOKEN'")
@click.option("--examples", default="auto", show_default=True,
              help="example scenes for the page: a folder of images, 'auto' (the checkpoint run's held-out "
                   "test scenes, when its data is here) or 'none'")
@click.option("--trace/--no-trace", default=True, show_default=True,
              help="run the backbone as a traced, frozen TorchScript graph: it runs without the GIL between layers, "
                   "so decoding and HTTP go on beside it (--no-trace: eager PyTorch)")
@click.option("--exact-decode", is_flag=True,
              help="decode every upload in full (default: a JPEG larger than 4x the network's input is decoded "
                   "DCT-scaled, 2.7x faster for a 12 MP phone photo, docs/benchmarks-serve.md)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="one log line per request")
@click.option("--stage1", type=click.Choice(defaults.STAGE1_MODES), default=defaults.STAGE1, show_default=True,
              help="what stage 1 searches the index by: each category's hybrid query or the scene's global embedding")
@click.option("--frontends", type=click.IntRange(1, 64), default=1, show_default=True,
              help="front-end processes (HTTP, decoding, both stages, each with its own GIL) feeding one model "
                   "process through shared memory; 1: everything in this process (docs/benchmarks-serve.md)")
@click.option("--keep-freed-memory/--release-freed-memory", "keep_freed", default=True, show_default=True,
              help="keep freed memory in the heap (glibc): no page faults in the forwards under load, the resident "
                   "memory stays at its peak; --release-freed-memory: glibc's defaults, memory handed back")
def serve_command(index_dir: Path, checkpoint: Path, host: str, port: int, device: str, threads: int | None,
                  batch_threads: int | None, model_threads: int | None, max_batch: int | None, pad_batches: bool | None,
                  decode_threads: int | None, pipeline: bool | None, queue_size: int,
                  max_upload_mb: float, watch_interval: float, reload_token: str | None, examples: str,
                  trace: bool, exact_decode: bool, log_level: str, access_log: bool, stage1: str,
                  frontends: int, keep_freed: bool) -> None:
    """Serve the HTTP API (/v1/look, /v1/retrieve, ...) and the page at / until interrupted."""
    device = str(resolve_device(device))
    if frontends > 1 and decode_threads is None:     # the device's decode threads, shared out among the front ends
        decode_threads = max(1, ServeSettings.for_device(device).decode_threads // frontends)
    settings = ServeSettings.for_device(
        device, threads=threads, batch_threads=batch_threads, model_threads=model_threads, max_batch=max_batch,
        pad_batches=pad_batches,
        decode_threads=decode_threads,
        pipeline=pipeline,
        queue_size=queue_size, max_upload_bytes=int(max_upload_mb * 2**20), watch_interval_s=watch_interval,
        reload_token=reload_token or None, examples=resolve_examples(examples, checkpoint), trace=trace,
        exact_decode=exact_decode)
    if keep_freed:       # before the model threads start: each mallocs from an arena of its own (common/allocator.py)
        keep_freed_memory()
    release_logs()   # a long-running server logs with times and levels, at --log-level
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        _serve(index_dir, checkpoint, host, port, device, settings, log_level, access_log, stage1, frontends)
    finally:
        torch.set_num_threads(threads_before)     # in-process callers (tests, embedding apps) keep their setting


def _serve(index_dir: Path, checkpoint: Path, host: str, port: int, device: str, settings: ServeSettings,
           log_level: str, access_log: bool, stage1: str = defaults.STAGE1, frontends: int = 1) -> None:
    sock = listen(host, port)          # before loading: a taken port fails in a second, not after the model
    try:
        retriever = Retriever.load(checkpoint=checkpoint, index_dir=index_dir, device=device, stage1=stage1)
        if frontends > 1:
            serve_with_frontends(sock, retriever, index_dir, checkpoint, settings, frontends, log_level=log_level,
                                 access_log=access_log, stage1=stage1,
                                 announce=lambda: _announce(sock, retriever, device, settings, host, frontends))
            sock.close()
            return
        app = create_app(retriever, index_dir, settings)
    except BaseException:
        sock.close()
        raise
    freeze_heap()
    _announce(sock, retriever, device, settings, host, frontends)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=15,
                            lifespan="on", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


def _announce(sock: socket.socket, retriever: Retriever, device: str, settings: ServeSettings, host: str,
              frontends: int) -> None:
    """The one line saying where the server listens and how it runs (benchmarks wait for it), and its warnings."""
    bound_host, bound_port = sock.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    index = retriever.index
    processes = "" if frontends == 1 else f"{frontends} front-end processes feeding "
    click.echo(f"serving http://{url_host}:{bound_port} ({index.version or 'flat index'}, {index.n:,} products, "
               f"{len(retriever.categories)} categories; {device}: {processes}one model executor, "
               f"{settings.model_threads} model thread(s) of {settings.threads} torch thread(s) alone / "
               f"{settings.batch_threads or settings.threads} batched"
               f"{', traced' if retriever.traced else ''}, batches up to {settings.max_batch}"
               f"{' padded' if settings.pad_batches else ''}, {settings.decode_threads} decode thread(s)"
               f"{' (exact)' if settings.exact_decode else ''}, "
               f"queue {settings.queue_size}; {len(settings.examples)} examples; admin reload "
               f"{'on' if settings.reload_token else 'off'})", err=True)
    if retriever.checkpoint.training_data == "sample":
        click.echo(f"note: {SAMPLE_MODEL_NOTICE}", err=True)
    if host not in LOOPBACK:
        click.echo(f"warning: listening on {host}: reachable from other machines, and the API has no "
                   "authentication (except the admin reload token)", err=True)
    sys.stderr.flush()
