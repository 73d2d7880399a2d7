"""One download: GET a URL, check the body is a whole image, and say whether a failure is worth retrying."""
from __future__ import annotations

import email.utils
import io
import re
import time
from urllib.parse import urlsplit, urlunsplit

import requests
from PIL import Image
from urllib3.exceptions import ReadTimeoutError

USER_AGENT = f"complete-the-look-fetcher/0.1 python-requests/{requests.__version__}"
# "<_io.BytesIO object at 0x7f...>" and the like, which PIL and urllib3 put in their messages.
_OBJECT_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>(: )?")


class FetchError(Exception):
    def __init__(self, reason: str, detail: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retryable = reason, detail, retryable
        self.status, self.retry_after = status, retry_after


def readable(exc: BaseException) -> str:
    """An exception's message without object reprs (a report is read by people, and diffed between runs)."""
    return _OBJECT_REPR.sub("", str(exc)).strip()


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
                         f"({type(exc).__name__}: {readable(exc)}; starts {head!r})",
                         retryable=content_type.startswith("image/")) from None


def download(session: requests.Session, url: str, *, timeout: float, max_bytes: int) -> tuple[bytes, str]:
    """GET one URL; return (body, content type) or raise FetchError saying whether to retry.

    `timeout` bounds the connection and each wait between bytes; the whole body gets 3x that.
    """
    try:
        with session.get(url, timeout=(timeout, timeout), stream=True) as resp:
            status = resp.status_code
            if status != 200:
                retryable = status in (408, 429) or status >= 500
                raise FetchError(f"http_{status}", f"HTTP {status} {resp.reason or ''}".strip(),
                                 retryable=retryable, status=status,
                                 retry_after=parse_retry_after(resp.headers.get("Retry-After")))
            declared = resp.headers.get("Content-Length")
            declared = int(declared) if declared and declared.isdigit() else None
            identity = resp.headers.get("Content-Encoding", "identity").lower() in ("", "identity")
            if declared is not None and declared > max_bytes:
                raise FetchError("too_large", f"Content-Length {declared} > {max_bytes}", retryable=False)
            deadline = time.monotonic() + 3 * timeout
            body = bytearray()
            for chunk in resp.iter_content(64 << 10):
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError("too_large", f"body over {max_bytes} bytes", retryable=False)
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"body not complete after {3 * timeout:g} s", retryable=True)
            if identity and declared is not None and len(body) != declared:
                raise FetchError("truncated", f"got {len(body)} of {declared} bytes", retryable=True)
            return bytes(body), resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    except FetchError:
        raise
    except requests.Timeout as exc:
        raise FetchError("timeout", f"{type(exc).__name__} after {timeout:g} s", retryable=True) from None
    except requests.exceptions.ChunkedEncodingError as exc:
        raise FetchError("truncated", f"connection broken mid-body ({readable(exc)})", retryable=True) from None
    except requests.ConnectionError as exc:
        if exc.args and isinstance(exc.args[0], ReadTimeoutError):
            raise FetchError("timeout", f"read timed out after {timeout:g} s", retryable=True) from None
        raise FetchError("connection_error", readable(exc)[:200], retryable=True) from None
    except requests.TooManyRedirects as exc:
        raise FetchError("too_many_redirects", readable(exc)[:200], retryable=False) from None
    except requests.RequestException as exc:
        raise FetchError("bad_request", f"{type(exc).__name__}: {readable(exc)}"[:200], retryable=False) from None
