"""Scene-level train/validation/test split, seeded and written once so every job uses the same one."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from common.files import write_json_atomic

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def make_split(scene_ids, *, seed: int, fractions: dict[str, float] = FRACTIONS) -> dict[str, list[str]]:
    """Shuffle the distinct scene ids with `seed` and cut them by `fractions`; no scene is in two parts."""
    ids = sorted(set(scene_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(fractions["train"] * len(ids)))
    n_val = int(round(fractions["val"] * len(ids)))
    shuffled = [ids[i] for i in order]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train:n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val:]),
    }


def load_or_make_split(path: str | os.PathLike, scene_ids, *, seed: int) -> dict[str, list[str]]:
    """Reuse the split at `path` when it covers exactly these scenes with this seed; else make and write one."""
    path = Path(path)
    wanted = set(scene_ids)
    if path.is_file():
        saved = json.loads(path.read_text())
        saved_ids = set(saved["train"]) | set(saved["val"]) | set(saved["test"])
        if saved.get("seed") == seed and saved_ids == wanted:
            return {k: saved[k] for k in ("train", "val", "test")}
    split = make_split(wanted, seed=seed)
    write_json_atomic(path, {"seed": seed, **split})
    return split


def read_split(path: str | os.PathLike) -> dict[str, list[str]]:
    saved = json.loads(Path(path).read_text())
    return {k: saved[k] for k in ("train", "val", "test")}
