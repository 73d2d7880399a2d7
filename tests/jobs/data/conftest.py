"""Fixtures of the data tests: the misbehaving HTTP server, with every request kept on 127.0.0.1."""
from __future__ import annotations

import pytest

from tests.jobs.data.misbehaving_server import Server

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def server(monkeypatch):
    """A started Server; the environment names no proxy, so even a client that trusts it stays local."""
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = Server()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()
