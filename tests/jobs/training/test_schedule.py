"""Per-epoch policy: the cosine schedule against torch's scheduler, and the checkpoint choice."""
import pytest
import torch

from jobs.training.config import TrainConfig
from jobs.training.schedule import selection_score, set_epoch_lr


def _optimizer(**groups):
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in groups.values()])


def test_cosine_schedule_matches_torchs_scheduler_and_constant_keeps_the_rate():
    ours, theirs = _optimizer(a=0.1, b=0.01), _optimizer(a=0.1, b=0.01)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=7)
    cfg = TrainConfig(epochs=7, lr_schedule="cosine")
    for epoch in range(7):
        set_epoch_lr(ours, cfg, epoch)
        for mine, torchs in zip(ours.param_groups, theirs.param_groups, strict=True):
            assert mine["lr"] == pytest.approx(torchs["lr"], abs=1e-12)
        theirs.step()
        reference.step()
    flat = _optimizer(a=0.1)
    set_epoch_lr(flat, TrainConfig(lr_schedule="constant"), 2)
    assert flat.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="lr_schedule"):
        set_epoch_lr(flat, TrainConfig(lr_schedule="step"), 0)


def test_a_resumed_schedule_is_the_schedule_of_a_run_started_that_long():
    fresh, resumed = _optimizer(a=0.1), _optimizer(a=0.1)
    set_epoch_lr(resumed, TrainConfig(epochs=1), 0)       # a 1-epoch run, then resumed to 4 epochs
    for epoch in range(4):
        set_epoch_lr(fresh, TrainConfig(epochs=4), epoch)
        if epoch:
            set_epoch_lr(resumed, TrainConfig(epochs=4), epoch)
        assert resumed.param_groups[0]["lr"] == fresh.param_groups[0]["lr"]


def test_checkpoint_selection_weighs_expected_fitb_and_hr10():
    steady = {"fitb": 0.9, "fitb_expected": 0.60, "hr@10": 0.30}
    lucky_draw = {"fitb": 1.0, "fitb_expected": 0.50, "hr@10": 0.32}
    assert selection_score(steady, 0.1, "fitb+hr@10") > selection_score(lucky_draw, 0.1, "fitb+hr@10")
    assert selection_score(lucky_draw, 0.1, "hr@10") > selection_score(steady, 0.1, "hr@10")
    assert selection_score(steady, 0.1, "hr@10") > selection_score(steady, 0.2, "hr@10")   # ties: lower loss
    with pytest.raises(ValueError, match="select_on"):
        selection_score(steady, 0.1, "loss")
