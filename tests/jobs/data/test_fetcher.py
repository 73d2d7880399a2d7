"""The fetcher against a local HTTP server that misbehaves on purpose: retries, limits, resume, remembered failures."""
from __future__ import annotations

import hashlib
import io
import time

import pytest
from PIL import Image

from common.config import ConfigWarning
from common.files import atomic_path
from jobs.data import image_cache
from jobs.data.fetcher import FetchConfig, Fetcher
from jobs.data.image_cache import Failure, ImageCache
from tests.jobs.data.files import leftovers
from tests.jobs.data.misbehaving_server import OTHER

FAST = FetchConfig(workers=4, rate=0, timeout=0.5, retries=2, backoff=0.01, max_backoff=0.05,
                   trust_env=False, seed=0)


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
    assert {k for k, f in fails.items() if f.permanent} == {"missing.jpg", "html.jpg"}
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

    # resume: cached URLs make no request; permanent failures (404, a page) are remembered and not asked
    # again; transient ones (5xx, timeouts, truncation) are asked again
    server.reset()
    again = Fetcher(cache, FAST).run(urls, progress=False)
    assert again.cached == 4 and again.fetched == 0 and again.remembered == 2
    assert server.count("/good/a.jpg") == server.count("/flaky.jpg") == server.count("/busy.jpg") == 0
    assert server.count("/redirect.jpg") == 0
    assert server.count("/missing.jpg") == 0 and server.count("/html.jpg") == 0
    assert server.count("/always500.jpg") == 3 and server.count("/truncated.jpg") == 3
    assert server.count("/stall.jpg") == 3 and server.count("/stall-body.jpg") == 3
    assert again.requests == 3 + 3 + 3 + 3
    assert {f.reason for f in again.failures} == {"http_404", "http_500", "timeout", "truncated", "not_an_image"}
    remembered = {f.url.rsplit("/", 1)[1]: f for f in again.failures if f.remembered}
    assert set(remembered) == {"missing.jpg", "html.jpg"} and all(f.permanent for f in remembered.values())
    assert remembered["missing.jpg"].status == 404 and "(as of 20" in remembered["missing.jpg"].detail
    assert leftovers(tmp_path) == []

    # --retry-failed asks again for the remembered ones too
    server.reset()
    retried = Fetcher(cache, FAST.replace(retry_failed=True)).run(urls, progress=False)
    assert retried.remembered == 0 and server.count("/missing.jpg") == 1 and server.count("/html.jpg") == 1


def test_too_large_and_bad_url(server, tmp_path):
    config = FAST.replace(max_bytes=100)
    result = Fetcher(ImageCache(tmp_path), config).run([f"{server.url}/good/x.jpg", "nonsense://x/y.jpg"],
                                                       progress=False)
    assert sorted(f.reason for f in result.failures) == ["bad_request", "too_large"]
    assert server.count("/good/x.jpg") == 1


def test_crash_while_storing_leaves_no_partial_file(server, tmp_path, monkeypatch):
    real = image_cache.write_bytes_atomic

    def disk_full(path, payload):
        with atomic_path(path) as tmp:
            tmp.write_bytes(payload[: len(payload) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_cache, "write_bytes_atomic", disk_full)
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(OSError, match="No space"):
        Fetcher(cache, FAST).run([f"{server.url}/good/a.jpg"], progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

    monkeypatch.setattr(image_cache, "write_bytes_atomic", real)
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


def test_global_rate_limit_spaces_requests(server, tmp_path):
    config = FAST.replace(rate=20.0, burst=1, workers=4)
    urls = [f"{server.url}/good/{i}.jpg" for i in range(6)]
    started = time.monotonic()
    Fetcher(ImageCache(tmp_path), config).run(urls, progress=False)
    elapsed = time.monotonic() - started
    assert sum(len(ts) for ts in server.hits.values()) == 6
    # One bucket for all 4 workers: 5 tokens after the first at 20/s. A lower bound on the whole run (load only
    # adds time); the server's own hit times are not used, a busy server handles queued requests back to back.
    assert elapsed >= 5 / 20 * 0.99


def test_a_transient_failure_on_retry_forgets_the_permanent_one(server, tmp_path):
    """A URL remembered as a 404 that answers 500 when asked again is retried on the next run."""
    cache = ImageCache(tmp_path)
    url = f"{server.url}/always500.jpg"
    cache.remember_failure(Failure(url, "http_404", "HTTP 404 Not Found", 1, 404, permanent=True))
    assert Fetcher(cache, FAST).run([url], progress=False).remembered == 1 and server.total() == 0
    result = Fetcher(cache, FAST.replace(retry_failed=True, retries=0)).run([url], progress=False)
    assert [f.reason for f in result.failures] == ["http_500"] and cache.known_failure(url) is None
    Fetcher(cache, FAST.replace(retries=0)).run([url], progress=False)
    assert server.count("/always500.jpg") == 2


def test_fetch_config_reads_old_and_new_saved_forms():
    with pytest.warns(ConfigWarning, match="colour"):
        config = FetchConfig.from_dict({"workers": 2, "colour": "blue"})
    assert config == FetchConfig(workers=2) and not config.retry_failed
    assert FetchConfig.from_dict(config.to_dict()) == config
