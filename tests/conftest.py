"""Fixtures shared by every test folder."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.retriever import Retriever
from tests.catalogue_vectors import CATEGORIES, clustered, write_embeddings
from tests.retrieval.world import World, exhaustive, make_presence_world, make_world


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


# The retrieval world (tests/retrieval/world.py): built once per session, for retrieval, service and job tests.

@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("retrieval-world"))


@pytest.fixture(scope="session")
def retriever(world) -> Retriever:
    return Retriever.load(checkpoint=world.checkpoint, index_dir=world.index_dir)


@pytest.fixture(scope="session")
def global_retriever(world) -> Retriever:
    """The world's retriever with the paper's stage 1: candidates by global distance."""
    return Retriever.load(checkpoint=world.checkpoint, index_dir=world.index_dir, stage1="global")


@pytest.fixture(scope="session")
def scenes(world, retriever):
    """Each test scene encoded once (one backbone forward each)."""
    return [retriever.encode_scene(path) for path in world.scenes]


@pytest.fixture(scope="session")
def oracles(world, retriever, scenes):
    return [exhaustive(retriever, scene) for scene in scenes]


@pytest.fixture(scope="session")
def presence_paths(world, retriever, tmp_path_factory):
    """(checkpoint, index dir) of the world's model with a presence head and a calibration (make_presence_world)."""
    return make_presence_world(world, retriever, tmp_path_factory.mktemp("presence-world"))
