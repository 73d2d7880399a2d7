"""`ctl data fetch`: download a dataset's images into a content-addressed cache, politely and resumably.

Cache layout (default ``DIR/cache``; share one between datasets with ``--cache``)::

    objects/ab/<sha256 of the bytes>.<jpg|png|...>   each image once, whatever URLs serve it
    refs/cd/<sha256 of the URL>.json                 url -> object, size, width, height

Both are written atomically (temp name, then rename), so an interrupted run leaves no partial
file, and a ref exists only for an object that decoded. A rerun requests only the URLs without a
ref. After a run, ``DIR/images.parquet`` maps every cached URL to its local file (relative to DIR
when the cache is inside it), ``DIR/fetch_report.json`` lists the failures with their reason, and
``DIR/catalog.parquet`` is rewritten to the products that now have a local image.
"""
from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

import click
import pyarrow as pa
import pyarrow.parquet as pq
import requests
from PIL import Image
from tqdm import tqdm
from urllib3.exceptions import ReadTimeoutError

from common.files import write_bytes_atomic, write_json_atomic
from jobs.data.datasets import IMAGES, PRODUCTS, SCENES, write_catalog, write_parquet_atomic

USER_AGENT = f"complete-the-look-fetcher/0.1 python-requests/{requests.__version__}"
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


@dataclass(frozen=True)
class FetchConfig:
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


# ---------------------------------------------------------------------------------------------
# Rate limiting

class RateLimiter:
    """A token bucket shared by all workers; ``hold`` pauses everyone (a server's Retry-After)."""

    def __init__(self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.capacity = max(1, burst)
        self.tokens = float(self.capacity)
        self.clock = clock
        self.updated = clock()
        self.hold_until = 0.0
        self.lock = threading.Lock()

    def hold(self, seconds: float) -> None:
        with self.lock:
            self.hold_until = max(self.hold_until, self.clock() + seconds)

    def wait_time(self) -> float:
        """Take a token and return 0, or return how long to wait before asking again."""
        with self.lock:
            now = self.clock()
            if now < self.hold_until:
                return self.hold_until - now
            if self.rate <= 0:
                return 0.0
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate

    def acquire(self, sleep: Callable[[float], bool]) -> bool:
        """Block until a token is taken; ``sleep(s)`` returns True to give up (stop requested)."""
        while (wait := self.wait_time()) > 0:
            if sleep(wait):
                return False
        return True


# ---------------------------------------------------------------------------------------------
# Cache

@dataclass(frozen=True)
class CacheEntry:
    url: str
    path: Path            # absolute path of the object
    sha256: str
    bytes: int
    width: int
    height: int


class ImageCache:
    """Content-addressed image store with a URL index (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def _ref(self, url: str) -> Path:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.root / "refs" / key[:2] / f"{key}.json"

    def lookup(self, url: str) -> CacheEntry | None:
        try:
            ref = json.loads(self._ref(url).read_text())
            path = self.root / ref["object"]
            if path.stat().st_size != ref["bytes"]:
                return None
            return CacheEntry(url, path, ref["sha256"], ref["bytes"], ref["width"], ref["height"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, url: str, payload: bytes, fmt: str, width: int, height: int) -> CacheEntry:
        digest = hashlib.sha256(payload).hexdigest()
        rel = f"objects/{digest[:2]}/{digest}.{_EXTENSIONS.get(fmt, fmt.lower())}"
        path = self.root / rel
        if not (path.exists() and path.stat().st_size == len(payload)):
            write_bytes_atomic(path, payload)
        ref = {"url": url, "sha256": digest, "object": rel, "bytes": len(payload), "width": width,
               "height": height, "format": fmt}
        write_bytes_atomic(self._ref(url), json.dumps(ref).encode())
        return CacheEntry(url, path, digest, len(payload), width, height)


# ---------------------------------------------------------------------------------------------
# One download

class FetchError(Exception):
    def __init__(self, reason: str, detail: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retryable = reason, detail, retryable
        self.status, self.retry_after = status, retry_after


@dataclass(frozen=True)
class Failure:
    url: str
    reason: str      # http_404, http_500, http_429, timeout, truncated, not_an_image, too_large, ...
    detail: str
    attempts: int
    status: int | None = None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def rewrite_url(url: str, base_url: str | None) -> str:
    """Point `url` at a mirror: `http://i.pinimg.com/400x/a.jpg` + `http://m:8/x` -> `http://m:8/x/400x/a.jpg`."""
    if not base_url:
        return url
    u, b = urlsplit(url), urlsplit(base_url)
    return urlunsplit((b.scheme, b.netloc, b.path.rstrip("/") + u.path, u.query, ""))


def inspect_image(payload: bytes, content_type: str) -> tuple[str, int, int]:
    """Decode the whole image; return (format, width, height) or raise FetchError(not_an_image)."""
    try:
        with Image.open(io.BytesIO(payload)) as img:
            img.load()
            return img.format or "UNKNOWN", img.width, img.height
    except Exception as exc:  # PIL raises many types for bad data (OSError, SyntaxError, ValueError...)
        head = payload[:40].decode("ascii", "replace").strip()
        # Bytes served as an image that fail to decode may be a damaged transfer: retry those.
        # Anything else (an HTML error page, a login wall) will not change on retry.
        raise FetchError("not_an_image", f"{content_type or 'no content-type'}, {len(payload)} bytes "
                         f"({type(exc).__name__}: {exc}; starts {head!r})",
                         retryable=content_type.startswith("image/")) from None


def download(session: requests.Session, url: str, config: FetchConfig) -> tuple[bytes, str]:
    """GET one URL; return (body, content type) or raise FetchError saying whether to retry."""
    try:
        with session.get(url, timeout=(config.timeout, config.timeout), stream=True) as resp:
            status = resp.status_code
            if status != 200:
                retryable = status in (408, 429) or status >= 500
                raise FetchError(f"http_{status}", f"HTTP {status} {resp.reason or ''}".strip(),
                                 retryable=retryable, status=status,
                                 retry_after=parse_retry_after(resp.headers.get("Retry-After")))
            declared = resp.headers.get("Content-Length")
            declared = int(declared) if declared and declared.isdigit() else None
            identity = resp.headers.get("Content-Encoding", "identity").lower() in ("", "identity")
            if declared is not None and declared > config.max_bytes:
                raise FetchError("too_large", f"Content-Length {declared} > {config.max_bytes}", retryable=False)
            deadline = time.monotonic() + 3 * config.timeout
            body = bytearray()
            for chunk in resp.iter_content(64 << 10):
                body += chunk
                if len(body) > config.max_bytes:
                    raise FetchError("too_large", f"body over {config.max_bytes} bytes", retryable=False)
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"body not complete after {3 * config.timeout:g} s", retryable=True)
            if identity and declared is not None and len(body) != declared:
                raise FetchError("truncated", f"got {len(body)} of {declared} bytes", retryable=True)
            return bytes(body), resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    except FetchError:
        raise
    except requests.Timeout as exc:
        raise FetchError("timeout", f"{type(exc).__name__} after {config.timeout:g} s", retryable=True) from None
    except requests.exceptions.ChunkedEncodingError as exc:
        raise FetchError("truncated", f"connection broken mid-body ({exc})", retryable=True) from None
    except requests.ConnectionError as exc:
        if exc.args and isinstance(exc.args[0], ReadTimeoutError):
            raise FetchError("timeout", f"read timed out after {config.timeout:g} s", retryable=True) from None
        raise FetchError("connection_error", str(exc)[:200], retryable=True) from None
    except requests.TooManyRedirects as exc:
        raise FetchError("too_many_redirects", str(exc)[:200], retryable=False) from None
    except requests.RequestException as exc:
        raise FetchError("bad_request", f"{type(exc).__name__}: {exc}"[:200], retryable=False) from None


# ---------------------------------------------------------------------------------------------
# Many downloads

@dataclass
class FetchResult:
    entries: dict[str, CacheEntry] = field(default_factory=dict)   # url -> cached image
    failures: list[Failure] = field(default_factory=list)
    cached: int = 0            # found in the cache, no request made
    fetched: int = 0           # downloaded, decoded and stored in this run
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
        """Download, verify and store one URL; return (entry or failure, attempts made)."""
        target = rewrite_url(url, self.config.base_url)
        attempts = 0
        while True:
            if not self.limiter.acquire(self.stop.wait):
                return Failure(url, "cancelled", "run interrupted", attempts), attempts
            attempts += 1
            try:
                payload, content_type = download(self._session(), target, self.config)
                fmt, width, height = inspect_image(payload, content_type)
                return self.cache.store(url, payload, fmt, width, height), attempts
            except FetchError as err:
                too_long = err.retry_after is not None and err.retry_after > self.config.max_retry_after
                if not err.retryable or attempts > self.config.retries or too_long:
                    detail = err.detail + (f" (Retry-After {err.retry_after:g} s over the cap)" if too_long else "")
                    return Failure(url, err.reason, detail, attempts, err.status), attempts
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
            if entry is None:
                todo.append(url)
            else:
                result.entries[url] = entry
                result.cached += 1
        bar = tqdm(total=len(todo), unit="img", desc="fetch", disable=None if progress is None else not progress,
                   dynamic_ncols=True)
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


# ---------------------------------------------------------------------------------------------
# A dataset dir

def manifest_urls(root: Path, column: str = "image_url") -> list[str]:
    """The distinct non-empty URLs of `column` in DIR/scenes.parquet and DIR/products.parquet."""
    urls: dict[str, None] = {}
    found = False
    for name in (SCENES, PRODUCTS):
        path = root / name
        if path.exists() and column in pq.read_schema(path).names:
            found = True
            for u in pq.read_table(path, columns=[column]).column(column).to_pylist():
                if u:
                    urls[u] = None
    if not found:
        raise ValueError(f"{root}: no {SCENES} or {PRODUCTS} with a {column!r} column "
                         "(write them with `ctl data stl` or `ctl data catalog`)")
    return list(urls)


def _stored_path(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def fetch_dataset(root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  config: FetchConfig = FetchConfig(), url_column: str = "image_url",
                  progress: bool | None = None) -> FetchResult:
    """Fetch every image URL of DIR's manifests; write images.parquet, fetch_report.json, catalog.parquet."""
    root = Path(root)
    urls = manifest_urls(root, url_column)
    cache = ImageCache(cache_dir if cache_dir is not None else root / "cache")
    result = Fetcher(cache, config).run(urls, progress=progress)
    entries = [result.entries[u] for u in urls if u in result.entries]
    write_parquet_atomic(root / IMAGES, pa.table({
        "url": pa.array([e.url for e in entries], pa.string()),
        "image_path": pa.array([_stored_path(e.path, root) for e in entries], pa.string()),
        "sha256": pa.array([e.sha256 for e in entries], pa.string()),
        "bytes": pa.array([e.bytes for e in entries], pa.int64()),
        "width": pa.array([e.width for e in entries], pa.int32()),
        "height": pa.array([e.height for e in entries], pa.int32()),
    }))
    write_json_atomic(root / "fetch_report.json", {
        "urls": len(urls), "cached": result.cached, "fetched": result.fetched, "failed": len(result.failures),
        "requests": result.requests, "bytes": result.bytes, "seconds": round(result.seconds, 3),
        "bytes_per_s": round(result.bytes / max(result.seconds, 1e-9)), "cache": str(cache.root),
        "base_url": config.base_url, "reasons": result.reasons,
        "failures": [asdict(f) for f in result.failures],
    })
    if (root / PRODUCTS).exists():
        write_catalog(root)
    return result


@click.command()
@click.argument("root", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base-url", default=None, help="Mirror to fetch from instead: replaces scheme://host of each URL.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Content-addressed image cache [default: DIR/cache].")
@click.option("--workers", default=FetchConfig.workers, show_default=True, type=click.IntRange(1, 256))
@click.option("--rate", default=FetchConfig.rate, show_default=True, type=click.FloatRange(0),
              help="Requests per second over all workers (0: unlimited).")
@click.option("--timeout", default=FetchConfig.timeout, show_default=True, type=click.FloatRange(0.01),
              help="Seconds to connect and between bytes.")
@click.option("--retries", default=FetchConfig.retries, show_default=True, type=click.IntRange(0))
@click.option("--backoff", default=FetchConfig.backoff, show_default=True, type=click.FloatRange(0),
              help="Base of the exponential backoff, seconds.")
@click.option("--url-column", default="image_url", show_default=True)
@click.option("--strict", is_flag=True, help="Exit non-zero when any image failed.")
def fetch_command(root: Path, base_url: str | None, cache_dir: Path | None, workers: int, rate: float,
                  timeout: float, retries: int, backoff: float, url_column: str, strict: bool) -> None:
    """Download the images of DIR's manifests into a cache; write DIR/images.parquet and a report."""
    if base_url and urlsplit(base_url).scheme not in ("http", "https"):
        raise click.ClickException(f"--base-url must be an http(s) URL, got {base_url!r}")
    config = FetchConfig(workers=workers, rate=rate, burst=max(1, workers), timeout=timeout, retries=retries,
                         backoff=backoff, base_url=base_url)
    try:
        result = fetch_dataset(root, cache_dir=cache_dir, config=config, url_column=url_column)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    total = result.cached + result.fetched + len(result.failures)
    click.echo(f"{total} images: {result.cached} already cached, {result.fetched} fetched "
               f"({result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s, {result.requests} requests), "
               f"{len(result.failures)} failed")
    if result.failures:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(result.reasons.items(), key=lambda kv: -kv[1]))
        click.echo(f"failures by reason: {reasons}; details in {root / 'fetch_report.json'}", err=True)
        if strict or result.cached + result.fetched == 0:
            raise click.ClickException(f"{len(result.failures)} of {total} images could not be fetched")
    click.echo(f"wrote {root / IMAGES}")
