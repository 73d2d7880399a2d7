"""Index tests run FAISS on one thread."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_faiss_thread():
    """One OpenMP thread: on a small shared machine, spinning FAISS threads can stall each other for seconds."""
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
