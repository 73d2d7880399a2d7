"""`ctl embed-catalog --decode gpu`'s entry point: the local engine, which then runs the device side alone.

embed_catalog picks this module for `--decode gpu` and the local engine for the other modes; the local
engine (:mod:`jobs.catalog.local_engine`) now runs every mode, with the device side of
:mod:`jobs.catalog.device_side`.
"""
from __future__ import annotations

from jobs.catalog.local_engine import open_engine

__all__ = ["open_engine"]
