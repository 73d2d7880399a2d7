"""Joining a Ray cluster that refuses us: one line that names the problem and, for token authentication, the fix."""
from __future__ import annotations

import pytest

from common import ray_cluster
from common.errors import InputError

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install '.[ray]')")


def refused(monkeypatch, exc: BaseException):
    """connect() to a cluster whose ray.init raises `exc`; returns the InputError it turned that into."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def init(**kwargs):
        raise exc
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(InputError) as info:
        ray_cluster.connect("127.0.0.1:6379")
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot join the Ray cluster at 127.0.0.1:6379: ")
    return message


def unauthenticated() -> ConnectionError:
    """What Ray 2.60's ray.init raises when the cluster wants a token this client did not send."""
    try:
        try:
            raise RuntimeError("Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379") from cause
    except ConnectionError as exc:
        return exc


def test_without_token_mode_the_error_names_the_fix(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    message = refused(monkeypatch, unauthenticated())
    assert "Failed to connect to Ray cluster" in message and "set RAY_AUTH_MODE=token" in message


def test_with_token_mode_a_refused_token_is_named_and_nothing_else_suggested(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    message = refused(monkeypatch, unauthenticated())
    assert "is not the cluster's" in message and "RAY_AUTH_MODE" not in message


def test_with_token_mode_another_failure_gets_no_token_hint(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    message = refused(monkeypatch, ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379"))
    assert message.endswith("127.0.0.1:6379: Failed to connect to Ray cluster at 127.0.0.1:6379")


def test_a_missing_token_in_token_mode_is_an_input_error_not_a_traceback(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    message = refused(monkeypatch, ray.exceptions.AuthenticationError(
        "Token authentication is enabled but no authentication token was found"))
    assert "no authentication token was found" in message and "is not the cluster's" in message
