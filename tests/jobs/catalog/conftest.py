"""Fixtures of the embed-catalog tests: one random checkpoint per module, and one torch thread where asked."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import load_checkpoint
from tests.jobs.catalog.catalogs import new_checkpoint


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads stall each other at every barrier.

    A module asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return new_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", seed=0)


@pytest.fixture(scope="module")
def model(ckpt):
    return load_checkpoint(ckpt).embedder.eval()
