"""One download's helpers: Retry-After, mirrors, and image checks whose messages people can read."""
from __future__ import annotations

import io
import socket

import pytest
import requests
from PIL import Image

from jobs.data.downloads import FetchError, download, inspect_image, parse_retry_after, readable, rewrite_url
from tests.jobs.data.misbehaving_server import GOOD


def test_parse_retry_after_and_rewrite_url():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert rewrite_url("http://i.pinimg.com/400x/ab/cd/ef/abcdef.jpg", "http://127.0.0.1:81/mirror/") == \
        "http://127.0.0.1:81/mirror/400x/ab/cd/ef/abcdef.jpg"
    assert rewrite_url("http://a/b.jpg?x=1", None) == "http://a/b.jpg?x=1"


def test_inspect_image_reads_a_whole_image():
    buf = io.BytesIO()
    Image.new("RGB", (5, 3)).save(buf, format="PNG")
    assert inspect_image(buf.getvalue(), "image/png") == ("PNG", 5, 3)


def test_a_page_is_not_an_image_and_the_detail_has_no_object_repr():
    with pytest.raises(FetchError) as caught:
        inspect_image(b"<html><body>Sign in</body></html>", "text/html")
    err = caught.value
    assert err.reason == "not_an_image" and not err.retryable
    assert err.detail == ("text/html, 33 bytes (UnidentifiedImageError: cannot identify image file; "
                          "starts '<html><body>Sign in</body></html>')")


def test_a_damaged_image_served_as_an_image_is_worth_retrying():
    with pytest.raises(FetchError) as caught:
        inspect_image(GOOD[: len(GOOD) // 2], "image/jpeg")
    assert caught.value.retryable and " at 0x" not in caught.value.detail


def test_readable_drops_object_reprs_only():
    assert readable(OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1d0b80>")) == \
        "cannot identify image file"
    assert readable(ValueError("NewConnectionError('<urllib3.connection.HTTPConnection object at 0xDEAD>: "
                               "Failed to establish a new connection')")) == \
        "NewConnectionError('Failed to establish a new connection')"
    assert readable(ValueError("HTTP 404 <not found>")) == "HTTP 404 <not found>"


def test_download_classifies_answers(server):
    session = requests.Session()
    session.trust_env = False
    body, ctype = download(session, f"{server.url}/good/a.jpg", timeout=1, max_bytes=1 << 20)
    assert body == GOOD and ctype == "image/jpeg"
    for path, reason, retryable in (("/missing.jpg", "http_404", False), ("/always500.jpg", "http_500", True),
                                    ("/truncated.jpg", "truncated", True)):
        with pytest.raises(FetchError) as caught:
            download(session, server.url + path, timeout=1, max_bytes=1 << 20)
        assert (caught.value.reason, caught.value.retryable) == (reason, retryable), path
    with pytest.raises(FetchError, match="too_large"):
        download(session, f"{server.url}/good/a.jpg", timeout=1, max_bytes=100)
    with socket.socket() as closed:                  # a port nobody listens on any more
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(FetchError) as caught:
        download(session, f"http://127.0.0.1:{port}/x.jpg", timeout=1, max_bytes=100)
    assert caught.value.reason == "connection_error" and caught.value.retryable
    assert " at 0x" not in caught.value.detail
