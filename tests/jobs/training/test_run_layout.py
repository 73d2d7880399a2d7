"""The run folder's contract: typed split and summary, written and read back, older files still load."""
import json

import pytest

from common.errors import ArtifactError
from jobs.data.splits import SceneSplit, make_split
from jobs.training.run_layout import RunLayout, TrainSummary


def test_split_round_trips_and_a_split_without_its_seed_still_loads(tmp_path):
    run = RunLayout(tmp_path)
    split = run.split_for([f"s{i}" for i in range(20)], seed=4)
    assert run.read_split() == split and split.seed == 4
    assert split.scene_ids() == {f"s{i}" for i in range(20)}
    run.split.write_text(json.dumps({"train": ["b", "a"], "val": [], "test": ["c"]}))   # an older split.json
    old = run.read_split()
    assert (old.train, old.test, old.seed) == (("b", "a"), ("c",), None)
    assert old["test"] == old.test and dict(old.items())["val"] == ()


def test_an_unusable_split_is_an_artifact_error_naming_the_file_and_is_remade_by_training(tmp_path):
    run = RunLayout(tmp_path)
    run.split.write_text(json.dumps({"train": ["a"]}))
    with pytest.raises(ArtifactError, match="split.json"):
        run.read_split()
    assert run.split_for(["a", "b"], seed=0) == make_split(["a", "b"], seed=0)
    assert run.read_split() == make_split(["a", "b"], seed=0)


def test_summary_round_trips_and_reads_older_and_newer_files(tmp_path):
    run = RunLayout(tmp_path)
    summary = TrainSummary(checkpoint=str(run.checkpoint), checkpoint_sha256="ab", best_epoch=2,
                           history=[{"epoch": 1, "loss": 0.5}], n_train_pairs=7, seconds=1.5, device="cpu")
    run.write_summary(summary)
    assert run.read_summary() == summary
    run.summary.write_text(json.dumps({"checkpoint": "x.pt", "best_epoch": 1, "a_later_field": 3}))
    assert run.read_summary() == TrainSummary(checkpoint="x.pt", best_epoch=1)
    run.summary.write_text("[]")
    with pytest.raises(ArtifactError, match="train_summary.json"):
        run.read_summary()


def test_missing_files_are_artifact_errors_and_names_hang_off_the_root(tmp_path):
    run = RunLayout.of_checkpoint(tmp_path / "checkpoint.pt")
    assert run.root == tmp_path and run.checkpoint.parent == run.config.parent == run.state.parent == tmp_path
    for read in (run.read_summary, run.read_split, run.read_config):
        with pytest.raises(ArtifactError):
            read()
    assert isinstance(SceneSplit.from_json({"train": [], "val": [], "test": []}), SceneSplit)
