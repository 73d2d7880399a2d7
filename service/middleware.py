"""The service's plain ASGI middleware: the upload byte cap (413 before parsing) and per-route request metrics."""
from __future__ import annotations

from time import perf_counter

from service.errors import error_response
from service.metrics import ServiceMetrics

MULTIPART_SLACK = 64 * 1024            # room for the multipart envelope around an upload of the byte cap
UPLOAD_PATHS = ("/v1/look", "/v1/retrieve", "/v1/compatibility")


class UploadLimit:
    """Refuse an upload over the byte cap with 413 before it is parsed (by Content-Length, or while reading).

    The body of an upload route is read here, at most cap + the multipart envelope, and handed on.
    """

    def __init__(self, app, *, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in UPLOAD_PATHS:
            return await self.app(scope, receive, send)
        limit = self.max_bytes + MULTIPART_SLACK
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, int(length))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(scope, receive, send, None)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, length: int | None):
        said = f"{length:,} bytes" if length is not None else "over the limit"
        response = error_response(413, f"upload is {said}; the limit is {self.max_bytes:,} "
                                  "bytes for the image (--max-upload-mb)", headers={"Connection": "close"})
        await response(scope, receive, send)


class RequestMetrics:
    """Count every answer by route template and status, and time it."""

    def __init__(self, app, *, metrics: ServiceMetrics, fixed_paths: set[str]):
        self.app, self.metrics, self.fixed_paths = app, metrics, fixed_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.fixed_paths else "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(perf_counter() - start)
