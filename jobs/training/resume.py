"""Resumable training state: everything an interrupted run needs to continue exactly where it stopped."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.errors import InputError
from common.files import atomic_path
from jobs.training.config import TrainConfig
from jobs.training.strategy import StepStrategy
from pipeline.embedder import StyleEmbedder


@dataclass
class Progress:
    """What the loop has done so far; saved after every epoch."""

    epoch: int = 0                       # epochs finished
    history: list[dict] = field(default_factory=list)
    best: dict | None = None             # {"score", "epoch", "sha256"} of the kept checkpoint
    triplets: int = 0                    # (scene, positive) pairs trained on, for the throughput
    train_seconds: float = 0.0           # time in training steps (validation excluded)


def save_state(path: str | os.PathLike, *, cfg: TrainConfig, embedder: StyleEmbedder,
               optimizer: torch.optim.Optimizer, strategy: StepStrategy, progress: Progress) -> None:
    with atomic_path(path) as tmp:
        torch.save({
            "config": cfg.to_dict(), "model": embedder.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": strategy.rng_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "epoch": progress.epoch, "history": progress.history, "best": progress.best,
            "triplets": progress.triplets, "train_seconds": progress.train_seconds,
        }, tmp)


def load_state(path: str | os.PathLike, *, cfg: TrainConfig, embedder: StyleEmbedder,
               optimizer: torch.optim.Optimizer, strategy: StepStrategy) -> Progress:
    """Restore model, optimizer and random states from `path` and return the progress made.

    Only the epoch count may differ from the saved run's settings (to train a finished run longer).
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    if TrainConfig.from_dict(state["config"]).replace(epochs=cfg.epochs) != cfg:
        raise InputError("--resume: the saved run used other settings; start a new --out or drop --resume")
    missing, unexpected = embedder.load_state_dict(state["model"], strict=False)
    # a state saved before the hybrid weights existed: they are fitted after training anyway (1/2 until then)
    if unexpected or set(missing) - {"hybrid_local_weight", "attention_log_sharpness"}:
        raise InputError(f"--resume: the saved model does not match this one (missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}); start a new --out or drop --resume")
    optimizer.load_state_dict(state["optimizer"])
    if state.get("rng") is not None:
        strategy.load_rng_state(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(state["epoch"], state["history"], state["best"], state.get("triplets", 0),
                    state.get("train_seconds", 0.0))
