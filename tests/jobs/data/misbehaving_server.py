"""A local HTTP server (127.0.0.1, a free port) whose paths each misbehave in one way, counting every request."""
from __future__ import annotations

import io
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def jpeg(color, size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


GOOD = jpeg((200, 30, 30))
OTHER = jpeg((30, 200, 30))


class Server:
    """A ThreadingHTTPServer on 127.0.0.1:0 whose paths each misbehave in one way; counts hits."""

    def __init__(self, images: dict[str, bytes] | None = None):
        self.hits: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.release = threading.Event()   # stalled handlers wait on it; set at shutdown
        self.images = images or {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send_body(self, body: bytes, ctype="image/jpeg", status=200, length=None, headers=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path
                with server.lock:
                    server.hits[path].append(time.monotonic())
                    n = len(server.hits[path])
                if path in server.images:
                    return self.send_body(server.images[path])
                if path.startswith("/good/"):
                    return self.send_body(GOOD)
                if path.startswith("/other/"):
                    return self.send_body(OTHER)
                if path == "/flaky.jpg":          # 500 once, then the image
                    return self.send_body(b"oops", "text/plain", 500) if n == 1 else self.send_body(GOOD)
                if path == "/always500.jpg":
                    return self.send_body(b"oops", "text/plain", 500)
                if path == "/busy.jpg":           # 429 with Retry-After: 1 once, then the image
                    if n == 1:
                        return self.send_body(b"slow down", "text/plain", 429, headers=[("Retry-After", "1")])
                    return self.send_body(OTHER)
                if path == "/stall.jpg":          # nothing at all until released
                    server.release.wait(5)
                    return
                if path == "/stall-body.jpg":     # headers and a few bytes, then nothing
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(GOOD)))
                    self.end_headers()
                    self.wfile.write(GOOD[:10])
                    self.wfile.flush()
                    server.release.wait(5)
                    return
                if path == "/truncated.jpg":      # Content-Length larger than what is sent, then close
                    return self.send_body(GOOD[: len(GOOD) // 2], length=len(GOOD))
                if path == "/html.jpg":
                    return self.send_body(b"<html><body>Sign in</body></html>", "text/html; charset=utf-8")
                if path == "/redirect.jpg":
                    self.send_response(302)
                    self.send_header("Location", "/good/target.jpg")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_body(b"not found", "text/plain", 404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def count(self, path: str) -> int:
        with self.lock:
            return len(self.hits.get(path, []))

    def total(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.hits.values())

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()
