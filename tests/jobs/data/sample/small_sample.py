"""The small generated sample's settings and its pairs file, for the sample tests (the fixture is in conftest.py)."""
from __future__ import annotations

import json

from jobs.data.layouts import SAMPLE_PAIRS

SMALL = {"seed": 3, "scenes": 12, "products": 60, "categories": 8, "image_size": 64}


def read_pairs(root) -> list[dict]:
    return [json.loads(line) for line in (root / SAMPLE_PAIRS).read_text().splitlines()]
