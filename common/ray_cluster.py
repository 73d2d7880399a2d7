"""Joining Ray (an optional extra): a cluster by --address or RAY_ADDRESS, or a local instance; one clear error."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from common.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_OBJECT_STORE = 1 << 30     # a local instance's object store: what the jobs keep in flight is small
# Ray 2.60's `ray start` turns token authentication on (when a token exists), and a client that is not in token
# mode is refused with a bare "Failed to connect" (found joining a `ray start` cluster by --address).
AUTH_HINT = ("a cluster started with `ray start` asks for a token (Ray 2.60 turns token authentication on): "
             "set RAY_AUTH_MODE=token here, with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
WRONG_TOKEN_HINT = "the token here (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is not the cluster's"


def import_ray():
    """The `ray` module, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install '.[ray]' (or 'ray[data]')") from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a local instance; True when this call started
    or joined it (the caller then shuts it down). An instance already initialised in this process (a test's,
    a notebook's) is used as it is, and False returned."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING}
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot join the Ray cluster at {target}: {first}{auth_hint(exc)}") from None
        return True
    # the workers of a local instance import this project from the same tree as this process
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE,
             runtime_env={"env_vars": {"PYTHONPATH": path}}, **quiet)
    return True


def auth_hint(exc: BaseException) -> str:
    """What to do about token authentication when joining a cluster failed ("" when it cannot be the cause)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return f"; {AUTH_HINT}"
    causes, seen = [], exc
    while seen is not None and len(causes) < 10:
        causes.append(str(seen).lower())
        seen = seen.__cause__ or seen.__context__
    if any("token" in text or "authenticat" in text for text in causes):
        return f"; {WRONG_TOKEN_HINT}"
    return ""
