"""Fixtures of the evaluation tests: a sample that learns (the tiny sample and run are tests/jobs/conftest.py's)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.jobs.evaluation.learning_run import learning_run


@pytest.fixture(scope="session")
def learned(tmp_path_factory) -> tuple[Path, dict]:
    return learning_run(tmp_path_factory)
