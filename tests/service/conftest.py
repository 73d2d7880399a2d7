"""Fixtures of the service tests: the tiny random-weight world of the retrieval tests, served in-process."""
from __future__ import annotations

import contextlib
import shutil

import pytest
from fastapi.testclient import TestClient

from retrieval.retriever import Retriever
from service.app import create_app
from service.settings import ServeSettings


@pytest.fixture(scope="session")
def served_retriever(world) -> Retriever:
    """The retriever the test apps serve: its backbone is traced by the first app (the default settings).
    Oracles compare against the retrieval tests' eager `retriever`."""
    return Retriever.load(checkpoint=world.checkpoint, index_dir=world.index_dir)


@pytest.fixture
def index_copy(world, tmp_path):
    """A private copy of the world's index directory, for tests that publish new builds into it."""
    return shutil.copytree(world.index_dir, tmp_path / "index")


@pytest.fixture
def serve(served_retriever, world):
    """serve(**settings) -> a started TestClient (model executor warmed up, watcher running) over the world's index."""
    with contextlib.ExitStack() as stack:
        def start(*, retriever=None, index_dir=None, raise_server_exceptions=True, wait_ready=True, **settings):
            settings = {"threads": 1, "watch_interval_s": 0, **settings}
            app = create_app(retriever or served_retriever, index_dir or world.index_dir, ServeSettings(**settings))
            client = stack.enter_context(TestClient(app, raise_server_exceptions=raise_server_exceptions))
            if wait_ready:
                assert client.app.state.service.executor.warm.wait(60), "the executor never warmed up"
            return client
        yield start


@pytest.fixture(scope="module")
def client(served_retriever, world):
    """One started service per test module, for the tests that change nothing (batches up to 4, no watcher)."""
    app = create_app(served_retriever, world.index_dir, ServeSettings(threads=1, max_batch=4, watch_interval_s=0))
    with TestClient(app) as started:
        yield started
