"""Seeds derived from text keys: the same key gives the same seed in every process and on every machine."""
from __future__ import annotations

import hashlib


def seed_from_key(key: str, *, bits: int = 64) -> int:
    """A non-negative seed of `bits` (32 or 64) bits: the first bytes of the key's sha256, little-endian.

    hashlib, not hash(): Python salts str hashes per process, and seeded views, negatives and
    queries must be the same on every run. Callers keep their own key format, so seeds (and every
    figure measured with them) stay what they were.
    """
    if bits not in (32, 64):
        raise ValueError(f"bits must be 32 or 64, got {bits}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[: bits // 8], "little")
