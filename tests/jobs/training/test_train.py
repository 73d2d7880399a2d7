"""Training and evaluation on a tiny generated sample: artefacts, determinism, resume, and the cache oracle."""
import json
import shutil
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from jobs.cli import main as ctl
from jobs.data.sample_data import generate
from jobs.evaluation.evaluate import run_evaluation
from jobs.training.train import (
    TrainConfig,
    cache_features,
    embeddings_from_cache,
    prepare_data,
    selection_score,
    set_epoch_lr,
    train,
    usable_queries,
)
from pipeline.checkpoint import load_checkpoint

CFG = TrainConfig(epochs=3, batch_size=16, dim=16, hidden=32, scene_views=1, product_views=0, negatives=2,
                  workers=0, val_queries=50)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    generate(root, seed=3, scenes=16, products=60, categories=3, image_size=96, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = train(sample, out, config=CFG, progress=False)
    return out, summary


def _copy_cache(src, dst):
    shutil.copytree(src / "cache", dst / "cache")


def test_training_writes_checkpoint_config_and_a_scene_split(trained, sample):
    out, summary = trained
    ckpt = load_checkpoint(out / "checkpoint.pt", with_backbone=False)
    assert ckpt.sha256 == summary["checkpoint_sha256"]
    assert json.loads((out / "config.json").read_text())["dim"] == 16
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    assert len(summary["history"]) == CFG.epochs
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]


def test_training_is_reproducible_and_resume_equals_a_straight_run(trained, tmp_path, sample):
    out, summary = trained
    straight = tmp_path / "straight"
    straight.mkdir()
    _copy_cache(out, straight)
    again = train(sample, straight, config=CFG, progress=False)
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in summary["history"]]
    first = load_checkpoint(out / "checkpoint.pt", with_backbone=False).embedder.heads_state_dict()
    second = load_checkpoint(straight / "checkpoint.pt", with_backbone=False).embedder.heads_state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    _copy_cache(out, resumed)
    train(sample, resumed, config=replace(CFG, epochs=1), progress=False)
    done = train(sample, resumed, config=CFG, resume=True, progress=False)
    assert [h["loss"] for h in done["history"]] == [h["loss"] for h in summary["history"]]


def test_cached_features_give_the_same_embeddings_as_images_through_the_model(trained, sample):
    from jobs.training.finetune import embeddings_from_images

    out, _ = trained
    full = load_checkpoint(out / "checkpoint.pt").embedder
    data = prepare_data(sample, out, CFG)
    cache_features(data, out, CFG, "cpu")
    queries = usable_queries(data, data.test_pairs + data.val_pairs, CFG.seed)[:4]
    from_cache = embeddings_from_cache(full, data, queries)
    from_images = embeddings_from_images(full, data, queries, CFG, "cpu")
    assert torch.allclose(from_cache.scene_global, from_images.scene_global, atol=2e-2)
    assert torch.allclose(from_cache.scene_regions, from_images.scene_regions, atol=2e-2)
    for pid, row in from_images.product_index.items():
        assert torch.allclose(from_cache.product_emb[from_cache.product_index[pid]], from_images.product_emb[row], atol=2e-2)


def test_evaluation_report_has_every_method_and_metric(trained):
    out, _ = trained
    report = run_evaluation(out, plots=True, device="cpu")
    assert set(report["methods"]) == {"hybrid", "global", "local", "backbone"}
    for metrics in report["methods"].values():
        assert set(metrics) == {"fitb", "fitb_expected", "hr@1", "hr@10", "hr@50"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["hr@1"] <= metrics["hr@10"] <= metrics["hr@50"]
    assert report["n_queries"] > 0
    gap = report["comparisons"]["hybrid - backbone"]
    for metric in ("fitb_expected", "hr@10"):
        diff = report["methods"]["hybrid"][metric] - report["methods"]["backbone"][metric]
        assert gap[metric]["diff"] == pytest.approx(diff)
        assert gap[metric]["ci95"][0] <= diff <= gap[metric]["ci95"][1]
    assert json.loads((out / "report.json").read_text())["methods"] == report["methods"]
    for png in ("report.png", "attention.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validation_report_is_written_beside_the_test_report(trained):
    out, _ = trained
    run_evaluation(out, plots=False, device="cpu")
    test_report = (out / "report.json").read_bytes()
    val = run_evaluation(out, split="val", plots=False, device="cpu")
    assert (out / "report.json").read_bytes() == test_report
    saved = json.loads((out / "report-val.json").read_text())
    assert saved["protocol"]["split"] == "val" and saved["methods"] == val["methods"]


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(ctl, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "no such dataset folder" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(ctl, ["evaluate", "--run", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "make train" in result.output and "Traceback" not in result.output
    for bad in (["--dropout", "1.0"], ["--hidden", "-1"]):
        result = runner.invoke(ctl, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *bad])
        assert result.exit_code != 0 and "--dropout in [0, 1)" in result.output and "Traceback" not in result.output


def test_cosine_schedule_matches_torchs_scheduler_and_constant_keeps_the_rate():
    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.SGD(params, lr=0.1)
    theirs = torch.optim.SGD(params, lr=0.1)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=7)
    cfg = replace(CFG, epochs=7, lr_schedule="cosine")
    for epoch in range(7):
        set_epoch_lr(ours, cfg, epoch)
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], abs=1e-12)
        theirs.step()
        reference.step()
    flat = torch.optim.SGD(params, lr=0.1)
    set_epoch_lr(flat, replace(CFG, lr_schedule="constant"), 2)
    assert flat.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="lr_schedule"):
        set_epoch_lr(flat, replace(CFG, lr_schedule="step"), 0)


def test_checkpoint_selection_weighs_expected_fitb_and_hr10():
    steady = {"fitb": 0.9, "fitb_expected": 0.60, "hr@10": 0.30}
    lucky_draw = {"fitb": 1.0, "fitb_expected": 0.50, "hr@10": 0.32}
    assert selection_score(steady, 0.1, "fitb+hr@10") > selection_score(lucky_draw, 0.1, "fitb+hr@10")
    assert selection_score(lucky_draw, 0.1, "hr@10") > selection_score(steady, 0.1, "hr@10")


def test_finetune_trains_the_backbone_end_to_end_and_evaluates(sample, tmp_path):
    from pipeline.backbones import build_backbone

    cfg = replace(CFG, mode="finetune", epochs=1, batch_size=8, val_queries=20)
    summary = train(sample, tmp_path, config=cfg, progress=False)
    assert summary["best_epoch"] == 1 and summary["triplets_per_second"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["mode"] == "finetune"
    tuned = load_checkpoint(tmp_path / "checkpoint.pt").embedder.backbone.state_dict()
    start = build_backbone(name=cfg.backbone, weights=cfg.backbone_weights).state_dict()
    changed = [k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, tuned[k])]
    assert changed, "fine-tuning left every backbone weight as it was"
    report = run_evaluation(tmp_path, plots=False, device="cpu")
    assert set(report["methods"]) == {"hybrid", "global", "local", "backbone"}


def test_attention_figure_shows_true_ranks_from_best_to_worst(trained, sample, tmp_path):
    from jobs.evaluation.evaluate import per_query_scores
    from jobs.evaluation.report_plots import attention_figure
    from jobs.training.train import category_lookup

    out, _ = trained
    embedder = load_checkpoint(out / "checkpoint.pt", with_backbone=False).embedder
    data = prepare_data(sample, out, CFG)
    cache_features(data, out, CFG, "cpu")
    queries = usable_queries(data, data.test_pairs + data.val_pairs, CFG.seed)
    emb = embeddings_from_cache(embedder, data, queries)
    drawn = attention_figure(data, queries, emb, embedder, tmp_path / "a.png", CFG.exclusion, n_scenes=3)
    ranks = per_query_scores(queries, emb, category_lookup(embedder), methods=("hybrid",))["hybrid"]["rank"]
    assert [rank for _, rank in drawn] == [int(ranks[qi]) for qi, _ in drawn]   # each row's own scene
    assert drawn[0][1] == ranks.min() and drawn[-1][1] == ranks.max()
    assert [r for _, r in drawn] == sorted(r for _, r in drawn)
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_spread_of_ranks_runs_from_best_to_worst():
    from jobs.evaluation.report_plots import spread_of_ranks

    ranks = [40, 3, 17, 0, 99, 8, 60]
    assert spread_of_ranks(ranks, 3) == [3, 2, 4]     # ranks 0, 17 (the median) and 99
    assert spread_of_ranks(ranks[:2], 4) == [1, 0]    # fewer queries than rows: each once
