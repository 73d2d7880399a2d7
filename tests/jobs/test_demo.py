"""`ctl demo` end to end on a tiny sample: every stage runs once, a rerun finds each one up to date."""
from __future__ import annotations

import functools
import json

import pytest
from click.testing import CliRunner

from common import defaults
from jobs import demo
from jobs.data.sample import generate
from jobs.training.config import TrainConfig

TINY_SAMPLE = {"scenes": 16, "products": 60, "categories": 3, "image_size": 96, "workers": 1, "progress": False}
TINY_TRAINING = {"epochs": 2, "batch_size": 16, "dim": 16, "scene_views": 0, "product_views": 0, "negatives": 2,
                 "workers": 0}


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    """The demo's own code and default paths, in an empty folder, with a tiny sample and a short training."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "generate", functools.partial(generate, **TINY_SAMPLE))
    monkeypatch.setattr(demo, "TrainConfig", functools.partial(TrainConfig, **TINY_TRAINING))
    return tmp_path


def test_the_demo_runs_every_stage_then_finds_them_up_to_date(tiny_demo):
    first = CliRunner().invoke(demo.demo_command, ["--device", "cpu", "--k", "5"])
    assert first.exit_code == 0, first.output
    for n, stage in enumerate(["sample data", "train", "evaluate", "embed catalog", "build index", "retrieve"], 1):
        assert f"[{n}/6] {stage}" in first.output
    assert "hybrid" in first.output and "hybrid - backbone" in first.output     # the results table
    assert "top 5 of 60 products" in first.output and (defaults.DEMO_DIR / "sheet.png").is_file()
    report = json.loads((defaults.RUN_DIR / "report.json").read_text())
    assert set(report["methods"]) == {"hybrid", "paper", "global", "local", "backbone"}
    test_scenes = json.loads((defaults.RUN_DIR / "split.json").read_text())["test"]
    assert any(sid in first.output for sid in test_scenes)        # the retrieval uses a held-out scene

    again = CliRunner().invoke(demo.demo_command, ["--device", "cpu", "--k", "5"])
    assert again.exit_code == 0, again.output
    for stage in ["sample data", "train", "evaluate", "embed catalog", "build index"]:
        line = next(line for line in again.output.splitlines() if f"] {stage}" in line)
        assert "up to date" in line, line

    (defaults.EMBEDDINGS_DIR / "_manifest.json").touch()           # newer embeddings than the index
    stale = CliRunner().invoke(demo.demo_command, ["--device", "cpu"])
    assert stale.exit_code == 0, stale.output
    assert "v000002" in next(line for line in stale.output.splitlines() if "] build index" in line)


def test_errors_are_one_line(tiny_demo):
    result = CliRunner().invoke(demo.demo_command, ["--device", "tpu"])
    assert result.exit_code == 2 and "Invalid value for '--device'" in result.stderr
