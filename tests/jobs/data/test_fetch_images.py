"""The image fetcher against a local HTTP server that misbehaves on purpose."""
from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.data import fetch_images
from jobs.data.datasets import load_dataset, read_catalog
from jobs.data.fetch_images import (
    FetchConfig,
    Fetcher,
    ImageCache,
    RateLimiter,
    fetch_command,
    parse_retry_after,
    rewrite_url,
)
from jobs.data.stl_ingest import ingest_stl


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


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Keep every request on 127.0.0.1 even where the environment names a proxy."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


FAST = FetchConfig(workers=4, rate=0, timeout=0.5, retries=2, backoff=0.01, max_backoff=0.05,
                   trust_env=False, seed=0)


def leftovers(root: Path) -> list[Path]:
    """Temp or partial files: atomic writes use hidden `.name.*.tmp` names."""
    return [p for p in root.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix == ".tmp")]


def test_misbehaving_server_scenarios_and_resume(server, tmp_path):
    names = ["good/a.jpg", "missing.jpg", "flaky.jpg", "always500.jpg", "busy.jpg", "stall.jpg",
             "stall-body.jpg", "truncated.jpg", "html.jpg", "redirect.jpg"]
    urls = [f"{server.url}/{n}" for n in names]
    cache = ImageCache(tmp_path / "cache")
    t0 = time.monotonic()
    result = Fetcher(cache, FAST).run(urls, progress=False)
    assert time.monotonic() - t0 < 12   # the stalls end by client timeouts, not by the server (5 s)

    ok = {u.rsplit("/", 1)[1] for u in result.entries}
    assert ok == {"a.jpg", "flaky.jpg", "busy.jpg", "redirect.jpg"}
    fails = {f.url.rsplit("/", 1)[1]: f for f in result.failures}
    assert {k: f.reason for k, f in fails.items()} == {
        "missing.jpg": "http_404", "always500.jpg": "http_500", "stall.jpg": "timeout",
        "stall-body.jpg": "timeout", "truncated.jpg": "truncated", "html.jpg": "not_an_image"}
    assert "text/html" in fails["html.jpg"].detail
    assert fails["missing.jpg"].status == 404
    # retry counts, as the client saw them and as the server counted them
    assert {k: f.attempts for k, f in fails.items()} == {
        "missing.jpg": 1, "always500.jpg": 3, "stall.jpg": 3, "stall-body.jpg": 3, "truncated.jpg": 3,
        "html.jpg": 1}
    for path, hits in {"/missing.jpg": 1, "/html.jpg": 1, "/always500.jpg": 3, "/truncated.jpg": 3,
                       "/flaky.jpg": 2, "/busy.jpg": 2, "/redirect.jpg": 1, "/good/target.jpg": 1,
                       "/good/a.jpg": 1}.items():
        assert server.count(path) == hits, path
    busy = server.hits["/busy.jpg"]
    assert busy[1] - busy[0] >= 0.95, "Retry-After: 1 was not honoured"
    assert result.fetched == 4 and result.cached == 0
    assert result.requests == 1 + 1 + 2 + 3 + 2 + 3 + 3 + 3 + 1 + 1

    # every cached image is the served image, decodes, and is stored under its own hash
    assert result.entries[f"{server.url}/busy.jpg"].path.read_bytes() == OTHER
    for entry in result.entries.values():
        data = entry.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256 == entry.path.stem
        assert Image.open(io.BytesIO(data)).size == (entry.width, entry.height) == (32, 24)
    # the redirect is cached under the URL that was asked for, sharing the object with good/a.jpg
    assert result.entries[f"{server.url}/redirect.jpg"].path == result.entries[f"{server.url}/good/a.jpg"].path
    assert len(list((tmp_path / "cache" / "objects").rglob("*.jpg"))) == 2
    assert leftovers(tmp_path) == []

    # resume: cached URLs make no request; only the failures are asked again
    server.reset()
    again = Fetcher(cache, FAST).run(urls, progress=False)
    assert again.cached == 4 and again.fetched == 0
    assert server.count("/good/a.jpg") == server.count("/flaky.jpg") == server.count("/busy.jpg") == 0
    assert server.count("/redirect.jpg") == 0
    assert server.count("/missing.jpg") == 1 and server.count("/always500.jpg") == 3
    assert {f.reason for f in again.failures} == {"http_404", "http_500", "timeout", "truncated", "not_an_image"}
    assert leftovers(tmp_path) == []


def test_too_large_and_bad_url(server, tmp_path):
    config = FetchConfig(**{**FAST.__dict__, "max_bytes": 100})
    result = Fetcher(ImageCache(tmp_path), config).run([f"{server.url}/good/x.jpg", "nonsense://x/y.jpg"],
                                                       progress=False)
    assert sorted(f.reason for f in result.failures) == ["bad_request", "too_large"]
    assert server.count("/good/x.jpg") == 1


def test_crash_while_storing_leaves_no_partial_file(server, tmp_path, monkeypatch):
    real = fetch_images.write_bytes_atomic

    def disk_full(path, payload):
        from common.files import atomic_path
        with atomic_path(path) as tmp:
            tmp.write_bytes(payload[: len(payload) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(fetch_images, "write_bytes_atomic", disk_full)
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(OSError, match="No space"):
        Fetcher(cache, FAST).run([f"{server.url}/good/a.jpg"], progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

    monkeypatch.setattr(fetch_images, "write_bytes_atomic", real)
    result = Fetcher(cache, FAST).run([f"{server.url}/good/a.jpg"], progress=False)
    assert result.fetched == 1 and leftovers(tmp_path) == []


def test_damaged_cache_object_is_fetched_again(server, tmp_path):
    cache = ImageCache(tmp_path)
    url = f"{server.url}/good/a.jpg"
    entry = Fetcher(cache, FAST).run([url], progress=False).entries[url]
    entry.path.write_bytes(entry.path.read_bytes()[:50])
    assert cache.lookup(url) is None
    assert Fetcher(cache, FAST).run([url], progress=False).fetched == 1
    assert server.count("/good/a.jpg") == 2


def test_rate_limiter_token_bucket():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])

    def sleep(s):
        now[0] += s
        return False

    for _ in range(6):
        assert limiter.acquire(sleep)
    assert now[0] == pytest.approx(2.0)        # 2 from the bucket, then one every 0.5 s
    limiter.hold(3.0)
    assert limiter.wait_time() == pytest.approx(3.0)
    assert not limiter.acquire(lambda s: True)  # a stop request ends the wait


def test_global_rate_limit_spaces_requests(server, tmp_path):
    config = FetchConfig(**{**FAST.__dict__, "rate": 20.0, "burst": 1, "workers": 4})
    urls = [f"{server.url}/good/{i}.jpg" for i in range(6)]
    Fetcher(ImageCache(tmp_path), config).run(urls, progress=False)
    times = sorted(t for p, ts in server.hits.items() for t in ts)
    assert len(times) == 6
    assert times[-1] - times[0] >= 5 / 20 * 0.9


def test_parse_retry_after_and_rewrite_url():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert rewrite_url("http://i.pinimg.com/400x/ab/cd/ef/abcdef.jpg", "http://127.0.0.1:81/mirror/") == \
        "http://127.0.0.1:81/mirror/400x/ab/cd/ef/abcdef.jpg"
    assert rewrite_url("http://a/b.jpg?x=1", None) == "http://a/b.jpg?x=1"


def test_ctl_data_fetch_stl_dir_end_to_end(server, tmp_path):
    """Ingest a small STL pair file, fetch through --base-url, and load the result for training."""
    sig = lambda i: hashlib.md5(str(i).encode()).hexdigest()  # noqa: E731
    products = {sig(i): ("Apparel|Shoes" if i % 2 else "Apparel|Bags") for i in range(6)}
    scenes = [sig(100 + i) for i in range(3)]
    lines = [json.dumps({"scene": scenes[i % 3], "product": p, "bbox": [0.1, 0.2, 0.5, 0.6]})
             for i, p in enumerate(products)]
    (tmp_path / "pairs.json").write_text("\n".join(lines) + "\n")
    (tmp_path / "cat.json").write_text(json.dumps(products))
    out = tmp_path / "stl"
    ingest_stl(tmp_path / "pairs.json", tmp_path / "cat.json", out)
    with pytest.raises(ValueError, match="ctl data fetch"):
        read_catalog(out / "catalog.parquet")
    with pytest.raises(ValueError, match="ctl data fetch"):
        load_dataset(out)

    dead = sig(5)
    for i, s in enumerate(list(products) + scenes):
        if s != dead:
            server.images[f"/400x/{s[:2]}/{s[2:4]}/{s[4:6]}/{s}.jpg"] = jpeg((i * 30 % 255, 60, 90))
    args = [str(out), "--base-url", server.url, "--timeout", "0.5", "--retries", "1",
            "--backoff", "0.01", "--rate", "0"]
    res = CliRunner().invoke(fetch_command, args)
    assert res.exit_code == 0, res.output
    assert "8 fetched" in res.output and "1 failed" in res.output

    report = json.loads((out / "fetch_report.json").read_text())
    assert report["reasons"] == {"http_404": 1} and report["failures"][0]["url"].endswith(f"{dead}.jpg")
    images = pq.read_table(out / "images.parquet").to_pylist()
    assert len(images) == 8 and all(not Path(r["image_path"]).is_absolute() for r in images)
    catalog = read_catalog(out / "catalog.parquet", check_files=True)
    assert sorted(catalog.column("product_id").to_pylist()) == sorted(set(products) - {dead})
    assert set(catalog.column_names) >= {"product_id", "image_path", "category", "image_url", "n_scenes"}

    ds = load_dataset(out)
    assert ds.layout == "stl" and len(ds.scenes) == 3 and len(ds.products) == 5
    assert len(ds.pairs) == 5 and ds.skipped == {"products without local image": 1, "pairs without local image": 1}
    assert all(p.image_path.is_file() for p in ds.products.values())
    assert leftovers(out) == []

    server.reset()
    res = CliRunner().invoke(fetch_command, args + ["--strict"])
    assert res.exit_code != 0 and "1 of 9 images could not be fetched" in res.output
    assert server.total() == 1  # only the dead URL, once: a 404 is not retried


def test_user_catalogue_with_image_urls(server, tmp_path):
    """`ctl data catalog` with an image_url column, then `ctl data fetch` through a mirror."""
    from jobs.data.user_catalog import build_catalog

    local = tmp_path / "local.jpg"
    local.write_bytes(OTHER)
    (tmp_path / "cat.csv").write_text(
        "product_id,image_path,image_url,category,brand\n"
        f"a,{local},,shoes,Acme\n"
        "b,,http://shop.example/good/b.jpg,bags,Bolt\n"
        "c,,http://shop.example/missing.jpg,bags,Bolt\n")
    out = tmp_path / "shop"
    build_catalog(tmp_path / "cat.csv", out)
    assert read_catalog(out).column("product_id").to_pylist() == ["a"]
    res = CliRunner().invoke(fetch_command, [str(out), "--base-url", server.url,
                                    "--timeout", "0.5", "--retries", "0", "--rate", "0"])
    assert res.exit_code == 0, res.output
    assert server.count("/good/b.jpg") == 1 and server.count("/missing.jpg") == 1
    rows = {r["product_id"]: r for r in read_catalog(out, check_files=True).to_pylist()}
    assert set(rows) == {"a", "b"} and rows["b"]["brand"] == "Bolt"
    assert Path(rows["b"]["image_path"]).read_bytes() == GOOD
    assert rows["b"]["image_url"] == "http://shop.example/good/b.jpg"
