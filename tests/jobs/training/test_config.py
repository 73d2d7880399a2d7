"""TrainConfig: defaults from the one home of defaults, tolerant loading, and the checks a run relies on."""
import dataclasses

import pytest

from common import defaults
from common.config import ConfigWarning
from common.errors import InputError
from jobs.training.config import TrainConfig


def test_shared_defaults_come_from_common_defaults():
    cfg = TrainConfig()
    assert (cfg.seed, cfg.backbone, cfg.backbone_weights) == (
        defaults.SEED,
        defaults.TRAIN_BACKBONE,
        defaults.BACKBONE_WEIGHTS,
    )
    assert (cfg.dim, cfg.hidden, cfg.dropout, cfg.margin) == (defaults.DIM, defaults.HIDDEN, defaults.DROPOUT,
                                                              defaults.MARGIN)
    assert cfg.exclusion == defaults.EXCLUSION


def test_a_saved_config_reads_back_equal():
    cfg = TrainConfig(seed=4, mode="finetune", epochs=2, workers=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_saved_fields_are_ignored_with_a_warning_and_missing_ones_defaulted():
    saved = {**TrainConfig(dim=32).to_dict(), "future_knob": 0.07, "data": "data/sample"}
    del saved["exclusion"]
    with pytest.warns(ConfigWarning, match="future_knob") as caught:
        cfg = TrainConfig.from_dict(saved, ignore=("data",))
    assert "data" not in str(caught[0].message)
    assert cfg.dim == 32 and cfg.exclusion == TrainConfig().exclusion


def test_the_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3


@pytest.mark.parametrize("change, named", [
    ({"mode": "distill"}, "mode"), ({"exclusion": "blur"}, "exclusion"), ({"epochs": 0}, "epochs"),
    ({"negatives": 0}, "negatives"), ({"hidden": -1}, "hidden"), ({"dropout": 1.0}, "dropout"),
    ({"lr_schedule": "step"}, "lr_schedule"), ({"select_on": "loss"}, "select_on"),
    ({"negatives_from": "catalogue"}, "negatives_from"), ({"negatives_from": "batch", "mode": "finetune"},
                                                           "negatives-from batch"),
])
def test_check_names_the_setting_a_run_cannot_use(change, named):
    with pytest.raises(InputError, match=named):
        TrainConfig(**change).check()
    assert TrainConfig().check() == TrainConfig()


@pytest.mark.parametrize("negatives_from, mode, shares", [
    ("auto", "frozen", True), ("auto", "finetune", False), ("batch", "frozen", True),
    ("pair", "frozen", False), ("pair", "finetune", False),
])
def test_auto_negatives_are_the_batch_when_frozen_and_the_pair_when_fine_tuning(negatives_from, mode, shares):
    cfg = TrainConfig(negatives_from=negatives_from, mode=mode).check()
    assert cfg.shares_negatives is shares
