"""Per-epoch policy shared by every mode: the learning rate of an epoch, and which epoch's weights to keep."""
from __future__ import annotations

import math

import torch

from common.errors import InputError
from jobs.training.config import LR_SCHEDULES, SELECT_ON, TrainConfig


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> None:
    """Each parameter group's learning rate for `epoch` (0-based): constant, or cosine from its base to 0.

    A closed form of the epoch index, so a run resumed with more epochs follows the same schedule as
    a run started with that many.
    """
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise InputError(f"unknown lr_schedule {cfg.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    factor = 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs)) if cfg.lr_schedule == "cosine" else 1.0
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * factor


def selection_score(val: dict, loss: float, select_on: str) -> tuple:
    """Higher is better; ties fall back to FITB, then to the training loss.

    FITB here is the expected FITB (every draw of negatives): on a small validation split a single
    draw adds enough noise to pick an epoch by luck.
    """
    hr10, fitb = val.get("hr@10", 0.0), val.get("fitb_expected", val.get("fitb", 0.0))
    if select_on == "fitb+hr@10":
        return (fitb + hr10, fitb, -loss)
    if select_on == "hr@10":
        return (hr10, fitb, -loss)
    raise InputError(f"unknown select_on {select_on!r}; known: {', '.join(SELECT_ON)}")
