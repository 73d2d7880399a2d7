"""The tiny generated sample and frozen-mode run that the training and evaluation tests share.

Both are made once per test session under pytest's base temp folder and reused from disk (the fixtures
`sample` and `trained` in tests/jobs/conftest.py); a test that writes into a run works on a copy.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from jobs.data.sample import generate
from jobs.training.config import TrainConfig
from jobs.training.run_layout import RunLayout, TrainSummary
from jobs.training.train import train

CFG = TrainConfig(epochs=3, batch_size=16, dim=16, hidden=32, scene_views=1, product_views=0, negatives=2,
                  workers=0, val_queries=50, device="cpu")


def tiny_sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "tiny-sample"
    generate(root, seed=3, scenes=16, products=60, categories=3, image_size=96, workers=1, progress=False)
    return root


def tiny_run(tmp_path_factory) -> tuple[Path, TrainSummary]:
    """(run folder, summary) of CFG trained on the tiny sample; do not write into the folder (copy_run)."""
    sample = tiny_sample(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / "tiny-run"
    if RunLayout(out).summary.is_file():
        return out, RunLayout(out).read_summary()
    return out, train(sample, out, config=CFG, progress=False)


def copy_run(run: Path, dst: Path, *, cache_only: bool = False) -> Path:
    """A private copy of a run folder (or of its feature cache only, for a new run that reuses it)."""
    dst.mkdir(parents=True, exist_ok=True)
    if cache_only:
        shutil.copytree(run / "cache", dst / "cache")
    else:
        shutil.copytree(run, dst, dirs_exist_ok=True)
    return dst
