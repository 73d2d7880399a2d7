"""Fixtures of the job tests: the tiny sample and its frozen-mode run, which training and evaluation share."""
from __future__ import annotations

from pathlib import Path

import pytest

from jobs.training.run_layout import TrainSummary
from tests.jobs.training.tiny_run import tiny_run, tiny_sample


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> Path:
    return tiny_sample(tmp_path_factory)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, TrainSummary]:
    return tiny_run(tmp_path_factory)
