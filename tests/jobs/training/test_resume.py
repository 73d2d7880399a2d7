"""Resume state: a saved state restores model, optimizer and every random state; other settings are refused."""
import numpy as np
import pytest
import torch

from common.errors import InputError
from jobs.training.config import TrainConfig
from jobs.training.resume import Progress, load_state, save_state
from jobs.training.strategy import StepStrategy
from pipeline.embedder import build_embedder


class SeededStrategy(StepStrategy):
    """A strategy whose only state is a numpy generator, like frozen mode's batch sampler."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def rng_state(self):
        return self.rng.bit_generator.state

    def load_rng_state(self, state):
        self.rng.bit_generator.state = state


def _model(seed):
    torch.manual_seed(seed)
    embedder = build_embedder(categories=["bags", "shoes"], with_backbone=False, dim=8)
    return embedder, torch.optim.AdamW(embedder.parameters(), lr=1e-2)


def test_a_saved_state_continues_exactly_where_it_stopped(tmp_path):
    cfg = TrainConfig(epochs=3)
    embedder, optimizer = _model(0)
    embedder.product_from_features(torch.randn(4, embedder.channels)).sum().backward()
    optimizer.step()
    strategy = SeededStrategy(5)
    strategy.rng.random(3)
    progress = Progress(
        epoch=2, history=[{"epoch": 1}, {"epoch": 2}], best={"epoch": 2}, triplets=40, train_seconds=1.5
    )
    save_state(tmp_path / "state.pt", cfg=cfg, embedder=embedder, optimizer=optimizer, strategy=strategy,
               progress=progress)
    expected = (strategy.rng.random(), torch.rand(1))     # what the saved run draws next

    fresh, fresh_optimizer = _model(1)
    other = SeededStrategy(99)
    torch.rand(5)
    restored = load_state(tmp_path / "state.pt", cfg=cfg.replace(epochs=6), embedder=fresh,
                          optimizer=fresh_optimizer, strategy=other)
    assert restored == progress
    assert all(torch.equal(v, embedder.state_dict()[k]) for k, v in fresh.state_dict().items())
    saved, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert saved and saved.keys() == loaded.keys()
    assert all(torch.equal(loaded[i][name], saved[i][name]) for i in saved for name in saved[i])
    assert (other.rng.random(), torch.rand(1)) == expected


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    embedder, optimizer = _model(0)
    save_state(tmp_path / "state.pt", cfg=TrainConfig(), embedder=embedder, optimizer=optimizer,
               strategy=SeededStrategy(0), progress=Progress())
    with pytest.raises(InputError, match="other settings"):
        load_state(tmp_path / "state.pt", cfg=TrainConfig(lr=0.5), embedder=embedder, optimizer=optimizer,
                   strategy=SeededStrategy(0))
