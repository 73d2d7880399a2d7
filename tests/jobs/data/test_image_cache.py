"""The content-addressed cache: one object per image, refs per URL, remembered permanent failures, atomic files."""
from __future__ import annotations

import hashlib
import json

import pytest

from common.files import atomic_path
from jobs.data import image_cache
from jobs.data.image_cache import Failure, ImageCache
from tests.jobs.data.misbehaving_server import GOOD, OTHER


def files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_one_object_per_image_whatever_the_url(tmp_path):
    cache = ImageCache(tmp_path)
    a = cache.store("http://h/a.jpg", GOOD, "JPEG", 32, 24)
    b = cache.store("http://mirror/a.jpg", GOOD, "JPEG", 32, 24)
    c = cache.store("http://h/c.png", OTHER, "PNG", 32, 24)
    digest = hashlib.sha256(GOOD).hexdigest()
    assert a.path == b.path == tmp_path.resolve() / "objects" / digest[:2] / f"{digest}.jpg"
    assert c.path.suffix == ".png" and a.path.read_bytes() == GOOD
    assert cache.lookup("http://mirror/a.jpg") == b and cache.lookup("http://h/none.jpg") is None
    assert len([f for f in files(tmp_path) if f.startswith("objects/")]) == 2
    assert len([f for f in files(tmp_path) if f.startswith("refs/")]) == 3


def test_a_damaged_object_is_not_a_hit(tmp_path):
    cache = ImageCache(tmp_path)
    entry = cache.store("http://h/a.jpg", GOOD, "JPEG", 32, 24)
    entry.path.write_bytes(GOOD[:50])
    assert cache.lookup("http://h/a.jpg") is None


def test_permanent_failures_are_remembered_with_reason_and_time_then_forgotten(tmp_path):
    cache = ImageCache(tmp_path)
    url = "http://h/missing.jpg"
    assert cache.known_failure(url) is None
    cache.remember_failure(Failure(url, "http_404", "HTTP 404 Not Found", 1, 404, permanent=True))
    [record_file] = tmp_path.rglob("*.json")
    assert record_file.parent.parent.name == "failed"
    record = json.loads(record_file.read_text())
    assert {k: record[k] for k in ("url", "reason", "detail", "status", "attempts")} == {
        "url": url, "reason": "http_404", "detail": "HTTP 404 Not Found", "status": 404, "attempts": 1}
    assert record["failed_at"].endswith("+00:00") and "T" in record["failed_at"]
    known = cache.known_failure(url)
    assert (known.reason, known.status, known.permanent, known.remembered) == ("http_404", 404, True, True)
    assert record["failed_at"] in known.detail
    cache.store(url, GOOD, "JPEG", 32, 24)                 # it works now: the record goes
    assert cache.known_failure(url) is None and cache.lookup(url) is not None
    cache.remember_failure(Failure("http://h/x", "http_410", "gone", 1, 410, permanent=True))
    cache.forget_failure("http://h/x")
    assert cache.known_failure("http://h/x") is None
    assert [f for f in files(tmp_path) if f.startswith("failed/")] == []


def test_a_crash_while_storing_leaves_no_partial_file(tmp_path, monkeypatch):
    def disk_full(path, payload):
        with atomic_path(path) as tmp:
            tmp.write_bytes(payload[: len(payload) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_cache, "write_bytes_atomic", disk_full)
    with pytest.raises(OSError, match="No space"):
        ImageCache(tmp_path / "cache").store("http://h/a.jpg", GOOD, "JPEG", 32, 24)
    assert files(tmp_path) == []
