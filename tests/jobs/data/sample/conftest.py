"""A small generated sample, made once for the sample tests that read its files."""
from __future__ import annotations

import json

import pytest

from jobs.data.layouts import SAMPLE_PAIRS
from jobs.data.sample import generate

SMALL = dict(seed=3, scenes=12, products=60, categories=8, image_size=64)


def read_pairs(root) -> list[dict]:
    return [json.loads(line) for line in (root / SAMPLE_PAIRS).read_text().splitlines()]


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    generate(out, workers=1, progress=False, **SMALL)
    return out
