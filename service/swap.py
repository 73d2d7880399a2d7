"""Hot swap of the index: watch the index directory's pointer, load a new build beside the old, check it, swap.

The signal is the directory's CURRENT pointer (index.layout); a flat directory without versions is
watched through its info.json (written last by a build). A changed signal loads the new build into a
new Retriever that shares the model (`Retriever.with_index`), which refuses an index made by another
checkpoint (sha256) or in another space; a canary query through both stages must then succeed. Only
then does the executor serve it. Anything that fails — a missing or corrupt file, a mismatched checkpoint
— refuses the new build: the old one keeps serving, the refusal is logged, counted and shown by
/readyz, and the same build is not tried again until the pointer moves (or an admin reload asks).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from common.errors import ArtifactError
from index.layout import INFO_FILE, current_version
from index.store import ProductIndex
from retrieval.results import Scene
from service.executor import ModelExecutor
from service.metrics import ServiceMetrics

log = logging.getLogger("ctl.serve")


class IndexRefused(ArtifactError):
    """A new index build that cannot be served; the previous one keeps serving."""


@dataclass(frozen=True)
class ReloadResult:
    result: str                  # "swapped", "unchanged" or "refused"
    version: str | None          # the build served after the attempt
    message: str

    def to_dict(self) -> dict:
        return {"result": self.result, "version": self.version, "message": self.message}


def index_signal(index_dir: Path) -> tuple:
    """What changes when a new build is published: the pointer's content, or info.json's identity."""
    version = current_version(index_dir)
    if version is not None:
        return ("version", version)
    st = (index_dir / INFO_FILE).stat()
    return ("info", st.st_ino, st.st_mtime_ns, st.st_size)


def one_line(message) -> str:
    return " ".join(str(message).split())


class IndexSwapper:
    """Loads new builds of `index_dir` into `pool`; polls every `interval_s` seconds when started (0: never)."""

    def __init__(self, pool: ModelExecutor, index_dir: str | Path, *, canary: Scene, interval_s: float,
                 metrics: ServiceMetrics | None = None):
        self.pool = pool
        self.index_dir = Path(index_dir)
        self.canary = canary
        self.interval_s = float(interval_s)
        self.metrics = metrics or pool.metrics
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._refused: set[tuple] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self._serving = self._signal_of(pool.retriever.index)
        except (OSError, ArtifactError):
            self._serving = None
        self._record(pool.retriever)

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.interval_s > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="index-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:
                log.exception("index watcher: unexpected error")

    # -- one check -----------------------------------------------------------------------------------------
    def check(self, *, retry_refused: bool = False) -> ReloadResult:
        """Swap in the build the directory now points at, if it is new and sound."""
        with self._lock:
            serving = self.pool.retriever.index.version
            try:
                signal = index_signal(self.index_dir)
            except (OSError, ArtifactError) as exc:    # a garbled pointer, a directory being replaced
                signal = ("unreadable", one_line(exc))
                if signal in self._refused and not retry_refused:
                    return ReloadResult("refused", serving, self.last_error or "refused before")
                return self._refuse(signal, f"cannot read the index directory: {one_line(exc)}")
            if signal == self._serving:
                return ReloadResult("unchanged", serving, f"already serving {serving or 'the flat index'}")
            if signal in self._refused and not retry_refused:
                return ReloadResult("refused", serving, self.last_error or "refused before")
            try:
                index = ProductIndex.load(self.index_dir)
                candidate = self.pool.retriever.with_index(index)
                self._canary_query(candidate)
            except Exception as exc:  # noqa: BLE001 - every way a new build can be broken refuses it
                return self._refuse(signal, one_line(exc))
            if index.version is not None:
                signal = ("version", index.version)   # a newer build may have been published meanwhile
            self.pool.swap(candidate)
            self._serving = signal
            self._refused.discard(signal)
            self.last_error = None
            self._record(candidate)
            self.metrics.reloads.labels("swapped").inc()
            message = f"now serving {index.version or 'the rebuilt flat index'} ({index.n} products)"
            log.info("index swap: %s (was %s)", message, serving or "flat")
            return ReloadResult("swapped", index.version, message)

    def _refuse(self, signal: tuple, reason: str) -> ReloadResult:
        serving = self.pool.retriever.index.version
        build = self.index_dir / signal[1] if signal[0] == "version" else self.index_dir
        message = (f"new index build {build} refused: {reason}; still serving "
                   f"{serving or 'the previous flat index'}")
        self._refused.add(signal)
        self.last_error = message
        self.metrics.reloads.labels("refused").inc()
        log.error("%s", message)
        return ReloadResult("refused", serving, message)

    def _canary_query(self, retriever) -> None:
        """Both stages over the new build, flat and per category; raises when the build cannot answer."""
        flat = retriever.retrieve(self.canary, k=1, candidates=1)
        if retriever.index.n and not flat.hits:
            raise IndexRefused("a canary query found no product")
        retriever.look(self.canary, k=1, candidates=1)

    def _signal_of(self, index: ProductIndex) -> tuple:
        if index.version is not None:
            return ("version", index.version)
        return index_signal(self.index_dir)

    def _record(self, retriever) -> None:
        index = retriever.index
        self.metrics.serving(version=index.version, products=index.n, checkpoint_sha256=retriever.checkpoint.sha256,
                             factory=index.info.factory)
