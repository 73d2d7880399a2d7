"""The scene split: disjoint, complete, seeded, and reused by later jobs."""
import json

from jobs.data.splits import load_or_make_split, make_split


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
