"""A small generated sample, made once for the sample tests that read its files."""
from __future__ import annotations

import pytest

from jobs.data.sample import generate
from tests.jobs.data.sample.small_sample import SMALL


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    generate(out, workers=1, progress=False, **SMALL)
    return out
