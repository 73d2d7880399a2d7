"""The fetcher's content-addressed image cache: each image once, a URL index, and the URLs that fail for good.

Layout (default ``DIR/cache``; one cache can serve several datasets)::

    objects/ab/<sha256 of the bytes>.<jpg|png|...>   each image once, whatever URLs serve it
    refs/cd/<sha256 of the URL>.json                 url -> object, size, width, height
    failed/cd/<sha256 of the URL>.json               a permanent failure: reason, detail, status, time

Every file is written atomically (temp name, then rename), so an interrupted run leaves no partial
file, and a ref exists only for an object that decoded. A failure is remembered only when asking
again cannot help (a 404, an HTML page served for an image, a body over the size limit), so a
rerun skips it; a success or a transient failure on a later try forgets it.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from common.files import write_bytes_atomic, write_json_atomic
from jobs.data.image_formats import cache_suffix


@dataclass(frozen=True)
class CacheEntry:
    url: str
    path: Path            # absolute path of the object
    sha256: str
    bytes: int
    width: int
    height: int


@dataclass(frozen=True)
class Failure:
    """A URL that could not be fetched: what the report lists and, when permanent, the cache remembers."""

    url: str
    reason: str      # http_404, http_500, http_429, timeout, truncated, not_an_image, too_large, ...
    detail: str
    attempts: int
    status: int | None = None
    permanent: bool = False     # asking again cannot help: skipped on reruns unless --retry-failed
    remembered: bool = False    # known from an earlier run: no request was made for it in this one


class ImageCache:
    """Content-addressed image store with a URL index and a record of permanent failures."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def _key_path(self, folder: str, url: str) -> Path:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.root / folder / key[:2] / f"{key}.json"

    def lookup(self, url: str) -> CacheEntry | None:
        try:
            ref = json.loads(self._key_path("refs", url).read_text())
            path = self.root / ref["object"]
            if path.stat().st_size != ref["bytes"]:
                return None
            return CacheEntry(url, path, ref["sha256"], ref["bytes"], ref["width"], ref["height"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, url: str, payload: bytes, fmt: str, width: int, height: int) -> CacheEntry:
        digest = hashlib.sha256(payload).hexdigest()
        rel = f"objects/{digest[:2]}/{digest}.{cache_suffix(fmt)}"
        path = self.root / rel
        if not (path.exists() and path.stat().st_size == len(payload)):
            write_bytes_atomic(path, payload)
        ref = {"url": url, "sha256": digest, "object": rel, "bytes": len(payload), "width": width,
               "height": height, "format": fmt}
        write_bytes_atomic(self._key_path("refs", url), json.dumps(ref).encode())
        self.forget_failure(url)
        return CacheEntry(url, path, digest, len(payload), width, height)

    def remember_failure(self, failure: Failure) -> None:
        """Record a permanent failure, with the time it happened (UTC)."""
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {k: v for k, v in asdict(failure).items() if k not in ("permanent", "remembered")}
        write_json_atomic(self._key_path("failed", failure.url), {**record, "failed_at": when})

    def known_failure(self, url: str) -> Failure | None:
        """The permanent failure recorded for `url` by an earlier run, or None."""
        try:
            record = json.loads(self._key_path("failed", url).read_text())
            return Failure(url, str(record["reason"]), f"{record['detail']} (as of {record['failed_at']})",
                           int(record["attempts"]), record.get("status"), permanent=True, remembered=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def forget_failure(self, url: str) -> None:
        self._key_path("failed", url).unlink(missing_ok=True)
