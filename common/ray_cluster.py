"""Joining Ray, an optional extra: a cluster (--address or RAY_ADDRESS) or a local instance, one clear error if absent."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from common.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_OBJECT_STORE = 1 << 30     # a local instance's object store: what the jobs keep in flight is small


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
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot join the Ray cluster at {target}: {first}") from None
        return True
    # the workers of a local instance import this project from the same tree as this process
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE,
             runtime_env={"env_vars": {"PYTHONPATH": path}}, **quiet)
    return True
