"""Scene-level train/validation/test split, seeded and written once so every job uses the same one."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ArtifactError, InputError
from common.files import write_json_atomic

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class SceneSplit:
    """Sorted scene ids of each part (no scene in two), and the seed that cut them (None: unknown).

    Saved as split.json: {"seed": int, "train": [...], "val": [...], "test": [...]}; a file from before
    the seed was recorded still loads.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int | None = None

    def __getitem__(self, part: str) -> tuple[str, ...]:
        """The scene ids of one part by name ("train", "val" or "test")."""
        if part not in PARTS:
            raise KeyError(part)
        return getattr(self, part)

    def items(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        return ((part, self[part]) for part in PARTS)

    def scene_ids(self) -> set[str]:
        return set(self.train) | set(self.val) | set(self.test)

    def to_json(self) -> dict:
        return {"seed": self.seed, **{part: list(ids) for part, ids in self.items()}}

    @classmethod
    def from_json(cls, saved: dict) -> SceneSplit:
        try:
            parts = {part: tuple(str(s) for s in saved[part]) for part in PARTS}
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"not a scene split (no list {exc} in it)") from None
        return cls(**parts, seed=saved.get("seed"))

    @classmethod
    def read(cls, path: str | os.PathLike) -> SceneSplit:
        """The split saved at `path`; ArtifactError when it is unreadable or not a split."""
        try:
            saved = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot read the scene split ({exc})") from None
        if not isinstance(saved, dict):
            raise ArtifactError(f"{path}: not a scene split")
        try:
            return cls.from_json(saved)
        except ArtifactError as exc:
            raise ArtifactError(f"{path}: {exc}") from None

    def write(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_json())


def make_split(scene_ids: Iterable[str], *, seed: int, fractions: dict[str, float] = FRACTIONS) -> SceneSplit:
    """Shuffle the distinct scene ids with `seed` and cut them by `fractions`; no scene is in two parts."""
    ids = sorted(set(scene_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(fractions["train"] * len(ids)))
    n_val = int(round(fractions["val"] * len(ids)))
    shuffled = [ids[i] for i in order]
    return SceneSplit(train=tuple(sorted(shuffled[:n_train])), val=tuple(sorted(shuffled[n_train:n_train + n_val])),
                      test=tuple(sorted(shuffled[n_train + n_val:])), seed=seed)


def hold_out_same(held: SceneSplit, scene_ids: Iterable[str]) -> SceneSplit:
    """`held`'s validation and test scenes, and every other one of `scene_ids` for training.

    More training looks scored on the same held-out looks (a learning curve, docs/quality.md, eleventh round).
    InputError when a held-out scene is not among `scene_ids` (the two runs would not score the same looks)
    or when `held` records no seed (its queries could not be drawn again).
    """
    ids = set(scene_ids)
    held_out = set(held.val) | set(held.test)
    missing = sorted(held_out - ids)
    if missing:
        raise InputError(f"{len(missing)} of the {len(held_out)} held-out scenes are not in this dataset "
                         f"(first: {missing[0]}): it would not be scored on the same looks")
    if held.seed is None:
        raise InputError("the held-out split records no seed (a split.json from before seeds were saved): "
                         "its queries cannot be drawn again; train that run once more first")
    return SceneSplit(train=tuple(sorted(ids - held_out)), val=held.val, test=held.test, seed=held.seed)


def load_or_make_split(path: str | os.PathLike, scene_ids: Iterable[str], *, seed: int) -> SceneSplit:
    """Reuse the split at `path` when it covers exactly these scenes with this seed; else make and write one."""
    path = Path(path)
    wanted = set(scene_ids)
    if path.is_file():
        try:
            saved = SceneSplit.read(path)
        except ArtifactError:
            saved = None   # unreadable: made again below, as if absent
        if saved is not None and saved.seed == seed and saved.scene_ids() == wanted:
            return saved
    split = make_split(wanted, seed=seed)
    split.write(path)
    return split
