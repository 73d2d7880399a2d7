"""Many downloads: a bounded thread pool sharing one rate limiter, with retries, into the image cache."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import requests

from common.config import JobConfig
from common.progress import progress_bar
from jobs.data.downloads import USER_AGENT, FetchError, download, inspect_image, rewrite_url
from jobs.data.image_cache import CacheEntry, Failure, ImageCache
from jobs.data.rate_limit import RateLimiter


@dataclass(frozen=True)
class FetchConfig(JobConfig):
    workers: int = 8                 # concurrent downloads
    rate: float = 10.0               # requests per second, all workers together (0 = unlimited)
    burst: int = 8                   # token-bucket capacity
    timeout: float = 10.0            # seconds to connect, and between bytes; a whole body gets 3x this
    retries: int = 4                 # retries after the first attempt (5xx, 429, 408, timeouts, truncation)
    backoff: float = 0.5             # base of the exponential backoff (full jitter), seconds
    max_backoff: float = 30.0
    max_retry_after: float = 120.0   # a longer Retry-After fails the URL instead of stalling the run
    max_bytes: int = 20 << 20
    base_url: str | None = None      # mirror: replaces scheme://host[/prefix] of every URL
    trust_env: bool = True           # honour HTTP(S)_PROXY / NO_PROXY (tests turn it off)
    seed: int | None = None          # jitter seed
    retry_failed: bool = False       # ask again for URLs the cache remembers as failing for good


@dataclass
class FetchResult:
    entries: dict[str, CacheEntry] = field(default_factory=dict)   # url -> cached image
    failures: list[Failure] = field(default_factory=list)
    cached: int = 0            # found in the cache, no request made
    fetched: int = 0           # downloaded, decoded and stored in this run
    remembered: int = 0        # permanent failures of an earlier run, not asked again
    requests: int = 0          # HTTP attempts made, retries included
    bytes: int = 0             # bytes downloaded in this run
    seconds: float = 0.0

    @property
    def reasons(self) -> dict[str, int]:
        return dict(Counter(f.reason for f in self.failures))


class Fetcher:
    """Bounded-concurrency downloader: a thread pool, one requests.Session per thread, a shared limiter.

    Retries are our own loop rather than urllib3's Retry: a retry must also follow a body that
    broke off mid-stream or did not decode, each attempt must take a token from the shared rate
    limiter, a Retry-After must pause every worker, and the report needs the attempt count per URL.
    """

    def __init__(self, cache: ImageCache, config: FetchConfig = FetchConfig()):
        self.cache, self.config = cache, config
        self.limiter = RateLimiter(config.rate, config.burst)
        self.stop = threading.Event()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = self.config.trust_env
            session.max_redirects = 5
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: uniform(0, min(max_backoff, backoff * 2**attempt))."""
        with self._lock:
            return self._rng.uniform(0, min(self.config.max_backoff, self.config.backoff * 2 ** attempt))

    def fetch_one(self, url: str) -> tuple[CacheEntry | Failure, int]:
        """Download, verify and store one URL; return (entry or failure, attempts made).

        A failure that asking again cannot help is remembered in the cache; any other forgets an
        earlier one (the URL may have changed its answer).
        """
        outcome, attempts = self._attempt(url)
        if isinstance(outcome, Failure) and outcome.reason != "cancelled":
            if outcome.permanent:
                self.cache.remember_failure(outcome)
            else:
                self.cache.forget_failure(url)
        return outcome, attempts

    def _attempt(self, url: str) -> tuple[CacheEntry | Failure, int]:
        config = self.config
        target = rewrite_url(url, config.base_url)
        attempts = 0
        while True:
            if not self.limiter.acquire(self.stop.wait):
                return Failure(url, "cancelled", "run interrupted", attempts), attempts
            attempts += 1
            try:
                payload, content_type = download(self._session(), target, timeout=config.timeout,
                                                 max_bytes=config.max_bytes)
                fmt, width, height = inspect_image(payload, content_type)
                return self.cache.store(url, payload, fmt, width, height), attempts
            except FetchError as err:
                too_long = err.retry_after is not None and err.retry_after > config.max_retry_after
                if not err.retryable or attempts > config.retries or too_long:
                    detail = err.detail + (f" (Retry-After {err.retry_after:g} s over the cap)" if too_long else "")
                    return Failure(url, err.reason, detail, attempts, err.status, permanent=not err.retryable), attempts
                delay = self.backoff(attempts - 1)
                if err.retry_after is not None:
                    self.limiter.hold(err.retry_after)   # the server asked everyone to slow down
                    delay = max(delay, err.retry_after)
                if self.stop.wait(delay):
                    return Failure(url, "cancelled", "run interrupted", attempts, err.status), attempts

    def run(self, urls: Iterable[str], *, progress: bool | None = None) -> FetchResult:
        t0 = time.perf_counter()
        self.stop.clear()
        result = FetchResult()
        todo = []
        for url in dict.fromkeys(urls):
            entry = self.cache.lookup(url)
            known = None if entry is not None or self.config.retry_failed else self.cache.known_failure(url)
            if entry is not None:
                result.entries[url] = entry
                result.cached += 1
            elif known is not None:
                result.failures.append(known)
                result.remembered += 1
            else:
                todo.append(url)
        bar = progress_bar(total=len(todo), unit="img", desc="fetch",
                           disable=None if progress is None else not progress)
        pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="fetch")
        try:
            futures = [pool.submit(self.fetch_one, url) for url in todo]
            for fut in as_completed(futures):
                outcome, attempts = fut.result()
                result.requests += attempts
                if isinstance(outcome, CacheEntry):
                    result.entries[outcome.url] = outcome
                    result.fetched += 1
                    result.bytes += outcome.bytes
                else:
                    result.failures.append(outcome)
                rate = result.bytes / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(ok=result.fetched, cached=result.cached, failed=len(result.failures),
                                rate=f"{rate / 1e6:.2f}MB/s", refresh=False)
                bar.update()
        finally:
            self.stop.set()      # wakes workers sleeping in backoff when we leave early (Ctrl-C)
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            for s in self._sessions:
                s.close()
        result.failures.sort(key=lambda f: f.url)
        result.seconds = time.perf_counter() - t0
        return result
