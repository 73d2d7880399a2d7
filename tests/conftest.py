"""Fixtures shared by every test folder."""
from __future__ import annotations

import numpy as np
import pytest

from tests.catalogue_vectors import CATEGORIES, clustered, write_embeddings


@pytest.fixture
def make_catalogue(tmp_path):
    """make_catalogue(n, d, ...) -> (embeddings dir, xb, categories array)."""
    def make(n=2000, d=32, *, n_clusters=50, seed=0, name="emb", **kw):
        xb, labels = clustered(n, d, n_clusters=n_clusters, seed=seed)
        cats = np.array([CATEGORIES[c % len(CATEGORIES)] for c in labels])
        return write_embeddings(tmp_path / name, xb, cats, **kw), xb, cats
    return make


@pytest.fixture(autouse=True)
def no_leaked_torch_threads():
    """Fails a test that changes torch's intra-op thread count and leaves it so.

    Float sums depend on the thread count: a leaked setting made a later reproducibility test differ in
    the 8th digit of a loss (an in-process `ctl serve` left one thread behind)."""
    import torch
    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"the test left torch.get_num_threads() at {after} (was {before})")
