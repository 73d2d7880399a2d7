"""The evaluation job on the tiny run: the report, split files, old checkpoints' configs, one-line CLI errors."""
import json

import pytest
import torch
from click.testing import CliRunner

from common import defaults
from common.config import ConfigWarning
from index.build import build_index
from jobs.catalog.embed_catalog import EmbedCatalogConfig, embed_catalog
from jobs.cli import main as ctl
from jobs.evaluation.evaluate import format_comparisons, format_table, run_evaluation
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from tests.jobs.training.tiny_run import copy_run


@pytest.fixture
def run(trained, tmp_path):
    return copy_run(trained[0], tmp_path / "run")


def test_evaluation_report_has_every_method_and_metric(run):
    report = run_evaluation(run, plots=True, device="cpu")
    assert set(report["methods"]) == {"hybrid", "paper", "global", "local", "backbone"}
    for metrics in report["methods"].values():
        assert set(metrics) == {"fitb", "fitb_expected", "hr@1", "hr@10", "hr@50"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["hr@1"] <= metrics["hr@10"] <= metrics["hr@50"]
    assert report["n_queries"] > 0 and report["protocol"]["split"] == "test"
    gap = report["comparisons"]["hybrid - backbone"]
    for metric in ("fitb_expected", "hr@10"):
        diff = report["methods"]["hybrid"][metric] - report["methods"]["backbone"][metric]
        assert gap[metric]["diff"] == pytest.approx(diff)
        assert gap[metric]["ci95"][0] <= diff <= gap[metric]["ci95"][1]
    assert json.loads((run / "report.json").read_text())["methods"] == report["methods"]
    if report["hybrid"]["form"] == "fitted":   # the weights' out-of-fold check, from the checkpoint
        summary = json.loads((run / "train_summary.json").read_text())
        assert report["hybrid"]["out_of_fold"] == summary["hybrid"]["out_of_fold"]
    for png in ("report.png", "attention.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validation_report_is_written_beside_the_test_report(run):
    run_evaluation(run, plots=False, device="cpu")
    test_report = (run / "report.json").read_bytes()
    val = run_evaluation(run, split="val", plots=False, device="cpu")
    assert (run / "report.json").read_bytes() == test_report
    saved = json.loads((run / "report-val.json").read_text())
    assert saved["protocol"]["split"] == "val" and saved["methods"] == val["methods"]


def test_a_checkpoint_with_an_unknown_and_a_missing_config_field_still_evaluates(run):
    expected = run_evaluation(run, plots=False, device="cpu")
    ckpt = load_checkpoint(run / "checkpoint.pt", with_backbone=False)
    older = {k: v for k, v in ckpt.config.items() if k != "exclusion"}       # written before `exclusion` existed
    newer = {**older, "future_knob": 0.07}                                    # ... or by a newer version
    save_checkpoint(run / "checkpoint.pt", ckpt.embedder, config=newer, extra=ckpt.extra)
    with pytest.warns(ConfigWarning, match="future_knob") as caught:
        report = run_evaluation(run, plots=False, device="cpu")
    assert all("data" not in str(w.message) for w in caught if w.category is ConfigWarning)
    assert report["protocol"]["scene_exclusion"] == "mask"                    # the missing field's default
    assert report["methods"] == expected["methods"] and report["checkpoint_sha256"] != expected["checkpoint_sha256"]


def test_report_text_formats_every_method_and_comparison(run):
    report = run_evaluation(run, plots=False, device="cpu")
    table = format_table(report["methods"]).splitlines()
    assert table[0].split() == ["method", "fitb", "fitb(exp)", "hr@1", "hr@10", "hr@50"]
    assert [line.split()[0] for line in table[1:]] == list(report["methods"])
    assert f"{report['methods']['hybrid']['hr@10']:.3f}" in table[1]
    lines = format_comparisons(report["comparisons"]).splitlines()
    assert len(lines) == 6 and lines[0].startswith("hybrid - backbone")


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(ctl, ["evaluate", "--run", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "`ctl train`" in result.output   # the hint, rendered as a command
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(ctl, ["evaluate", "--run", str(tmp_path), "--split", "train"])
    assert result.exit_code == 2 and "--split" in result.output and "Traceback" not in result.output
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = runner.invoke(ctl, ["evaluate", "--run", str(tmp_path)])
    assert result.exit_code == 1 and "not a readable checkpoint" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_evaluate_cli_prints_the_table(run):
    result = CliRunner().invoke(ctl, ["evaluate", "--run", str(run), "--no-plots", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "hybrid" in result.output and "wrote" in result.output and not (run / "report.png").exists()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["format"]   # the run is left as it was


def test_the_report_holds_presence_and_classifier_figures_and_old_runs_get_a_calibration(run):
    report = run_evaluation(run, plots=True, device="cpu")
    presence = report["presence"]
    assert presence["available"] and set(presence["per_category"]) == set(
        load_checkpoint(run / "checkpoint.pt", with_backbone=False).embedder.categories
    )
    for method in ("hybrid", "global", "local"):
        figures = report["classifier"][method]
        assert {"roc_auc", "precision", "recall", "f1", "threshold", "ece", "reliability"} <= set(figures)
    assert report["classifier_protocol"]["refitted_by_evaluate"] is False       # ctl train wrote it
    assert (run / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (run / "calibration.json").unlink()                                         # a run from before the classifier
    again = run_evaluation(run, plots=False, device="cpu")
    assert again["classifier_protocol"]["refitted_by_evaluate"] is True and (run / "calibration.json").is_file()
    assert again["methods"] == report["methods"]
    for method, figures in report["classifier"].items():     # the same fit on the same validation pairs
        for key in ("roc_auc", "threshold", "ece", "precision", "recall"):
            assert again["classifier"][method][key] == pytest.approx(figures[key], abs=1e-6), (method, key)
    # --refit-calibration replaces a calibration that matches the checkpoint (e.g. one from before cohorts).
    stale = json.loads((run / "calibration.json").read_text())
    stale["methods"]["hybrid"]["b"] += 5.0
    (run / "calibration.json").write_text(json.dumps(stale))
    kept = run_evaluation(run, plots=False, device="cpu")
    assert kept["classifier_protocol"]["refitted_by_evaluate"] is False
    assert kept["classifier"]["hybrid"]["ece"] != pytest.approx(report["classifier"]["hybrid"]["ece"], abs=1e-6)
    refitted = run_evaluation(run, plots=False, device="cpu", refit_calibration=True)
    assert refitted["classifier_protocol"]["refitted_by_evaluate"] is True
    assert refitted["classifier"]["hybrid"]["ece"] == pytest.approx(report["classifier"]["hybrid"]["ece"], abs=1e-6)


def test_evaluate_through_the_index_from_the_cli(run, sample, tmp_path):
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    embed_catalog(sample / "catalog.parquet", run / "checkpoint.pt", emb,
                  config=EmbedCatalogConfig(device="cpu", workers=0), progress=False)
    build_index(emb, idx, n_eval_queries=20, n_tune_queries=20)
    result = CliRunner().invoke(ctl, ["evaluate", "--run", str(run), "--no-plots", "--device", "cpu",
                                      "--through-index", str(idx)])
    assert result.exit_code == 0, result.output
    assert "through the index (60 products" in result.output and "top-20 overlap with exhaustive" in result.output
    report = json.loads((run / "report.json").read_text())
    through = report["through_index"]
    assert through["n_queries"] == report["n_queries"] and through["candidates"] == defaults.CANDIDATES
    assert set(through["two_stage"]) == {"hr@1", "hr@10", "hr@50", "mrr"}
    # 20 products a category, fewer than C: two-stage is exhaustive, every positive within 50.
    assert through["two_stage"] == through["exhaustive"] and through["exhaustive"]["hr@50"] == 1.0
    assert [row["candidates"] for row in through["candidate_cut"]["per_category"]] == [20, 40, 100, 200, 400, 1000]
    # --candidates sets the two-stage cut: 5 of a category's 20 products, so a positive outside them is a miss.
    cut = CliRunner().invoke(ctl, ["evaluate", "--run", str(run), "--no-plots", "--device", "cpu",
                                   "--through-index", str(idx), "--candidates", "5"])
    assert cut.exit_code == 0, cut.output
    narrow = json.loads((run / "report.json").read_text())["through_index"]
    assert narrow["candidates"] == 5 and "C=5 " in cut.output
    assert narrow["two_stage"]["hr@50"] < through["two_stage"]["hr@50"] == 1.0
    assert narrow["exhaustive"] == through["exhaustive"]                       # the cut changes two-stage only
