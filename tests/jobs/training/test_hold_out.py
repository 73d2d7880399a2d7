"""`ctl train --hold-out-from`: more training looks, scored on another run's held-out looks."""
import json

from click.testing import CliRunner

from jobs.cli import main as ctl
from jobs.data.datasets import load_dataset
from jobs.data.sample import generate
from jobs.training.config import TrainConfig
from jobs.training.run_layout import RunLayout
from jobs.training.train import train
from jobs.training.training_data import prepare_data
from pipeline.checkpoint import load_checkpoint
from tests.jobs.training.tiny_run import CFG, copy_run


def test_a_run_on_more_looks_holds_out_the_same_scenes_and_evaluation_keeps_them(trained, sample, tmp_path):
    small_run, _ = trained
    held = RunLayout(small_run).read_split()
    # the generator's first 16 looks are the tiny sample's: 8 more looks, the same held-out ones among them
    bigger = tmp_path / "bigger"
    generate(bigger, seed=3, scenes=24, products=80, categories=3, image_size=96, workers=1, progress=False)
    scenes = {p.scene_id for p in load_dataset(bigger).pairs}
    assert {p.scene_id for p in load_dataset(sample).pairs} < scenes

    out = copy_run(small_run, tmp_path / "more", cache_only=True)
    train(bigger, out, config=CFG.replace(epochs=1, seed=7, hold_out_from=str(small_run)), progress=False)
    split = RunLayout(out).read_split()
    assert split.val == held.val and split.test == held.test and split.seed == held.seed
    assert set(split.train) == scenes - set(held.val) - set(held.test) and set(held.train) < set(split.train)

    saved = TrainConfig.from_dict(load_checkpoint(out / "checkpoint.pt", with_backbone=False).config, ignore=("data",))
    assert saved.seed == 7 and saved.data_seed == held.seed and saved.hold_out_from == str(small_run)
    before = (out / "split.json").read_text()
    again = prepare_data(bigger, out, saved)          # what `ctl evaluate` does: the split is read, not cut anew
    assert again.split == split and (out / "split.json").read_text() == before


def test_holding_out_scenes_the_data_lacks_is_a_one_line_error(sample, tmp_path):
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "split.json").write_text(json.dumps({"seed": 0, "train": ["a"], "val": ["b"], "test": ["elsewhere"]}))
    result = CliRunner().invoke(ctl, ["train", "--data", str(sample), "--out", str(tmp_path / "run"),
                                      "--hold-out-from", str(other)])
    assert result.exit_code != 0 and "2 of the 2 held-out scenes are not in this dataset" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
