"""The scene split: disjoint, complete, seeded, and reused by later jobs."""
import json

import pytest

from common.errors import InputError
from jobs.data.splits import SceneSplit, hold_out_same, load_or_make_split, make_split


def test_split_is_disjoint_complete_and_seeded():
    ids = [f"s{i:03d}" for i in range(100)]
    a = make_split(ids, seed=1)
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(ids)
    assert not (set(a["train"]) & set(a["test"])) and not (set(a["val"]) & set(a["test"]))
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (70, 15, 15)
    assert make_split(ids, seed=1) == a
    assert make_split(ids, seed=2) != a


def test_saved_split_is_reused_and_remade_when_the_scenes_change(tmp_path):
    path = tmp_path / "split.json"
    ids = [f"s{i}" for i in range(20)]
    first = load_or_make_split(path, ids, seed=0)
    saved = json.loads(path.read_text())
    saved["test"], saved["train"] = saved["train"], saved["test"]  # a split made elsewhere
    path.write_text(json.dumps(saved))
    assert load_or_make_split(path, ids, seed=0)["test"] == first["train"]
    remade = load_or_make_split(path, ids + ["s99"], seed=0)
    assert "s99" in set(remade["train"]) | set(remade["val"]) | set(remade["test"])


def test_hold_out_same_keeps_the_held_out_scenes_and_trains_on_every_other():
    small = make_split([f"s{i:03d}" for i in range(40)], seed=4)
    bigger = [f"s{i:03d}" for i in range(100)]
    split = hold_out_same(small, bigger)
    assert split.val == small.val and split.test == small.test and split.seed == 4
    assert set(split.train) == set(bigger) - set(small.val) - set(small.test)
    assert set(small.train) < set(split.train)           # the old training scenes stay in training
    assert not set(split.train) & (set(split.val) | set(split.test))


def test_hold_out_same_refuses_data_without_the_held_out_scenes_or_a_split_without_its_seed():
    small = make_split([f"s{i:03d}" for i in range(40)], seed=4)
    lost = small.test[0]
    with pytest.raises(InputError, match=f"1 of the 12 held-out scenes are not in this dataset \\(first: {lost}\\)"):
        hold_out_same(small, [s for s in (f"s{i:03d}" for i in range(100)) if s != lost])
    unseeded = SceneSplit(train=small.train, val=small.val, test=small.test, seed=None)
    with pytest.raises(InputError, match="records no seed"):
        hold_out_same(unseeded, [f"s{i:03d}" for i in range(40)])
