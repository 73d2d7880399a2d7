"""The training loop on the tiny sample: artefacts, determinism, resume, validation as a callable, CLI errors."""
import ast
import json
from pathlib import Path

import torch
from click.testing import CliRunner

from jobs.cli import main as ctl
from jobs.training.config import MODES
from jobs.training.resume import Progress
from jobs.training.run_layout import STATE_FILE, RunLayout
from jobs.training.train import STRATEGIES, fit, strategy_for, train
from jobs.training.training_data import prepare_data, trainable_pairs
from pipeline.checkpoint import load_checkpoint
from tests.jobs.training.tiny_run import CFG, copy_run

TRAINING = Path(__file__).resolve().parents[3] / "jobs" / "training"


def test_training_writes_checkpoint_config_and_a_scene_split(trained):
    out, summary = trained
    ckpt = load_checkpoint(out / "checkpoint.pt", with_backbone=False)
    assert ckpt.sha256 == summary.checkpoint_sha256
    assert ckpt.extra["epoch"] == summary.best_epoch
    assert ckpt.training_data == "sample" and ckpt.hybrid_form in ("fitted", "paper")   # the generator's marker
    assert json.loads((out / "config.json").read_text())["dim"] == 16
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    assert len(summary.history) == CFG.epochs
    assert summary.history[-1]["loss"] < summary.history[0]["loss"]
    assert summary.n_train_pairs > 0 and summary.n_val_queries > 0 and summary.triplets_per_second > 0
    if summary.hybrid["form"] == "fitted":   # the weights' out-of-fold check travels with them
        check = summary.hybrid["out_of_fold"]
        assert check["folds"] == 5 and check["fitted_minus_paper"] == check["fitted"] - check["paper"]
        assert ckpt.extra["hybrid"]["out_of_fold"] == check


def test_ctl_train_says_whether_the_fitted_weights_hold_out_of_fold(tmp_path, monkeypatch):
    import jobs.training.train as train_module
    from jobs.training.run_layout import TrainSummary

    def fake_train(data_dir, out_dir, *, config, resume):
        check = {"fitted": 1.09, "paper": 1.11, "fitted_ahead": False}
        return TrainSummary(checkpoint=str(out_dir / "checkpoint.pt"), best_epoch=3,
                            history=[{"epoch": 1, "loss": 1.0}], hybrid={"form": "fitted", "out_of_fold": check})

    monkeypatch.setattr(train_module, "train", fake_train)
    result = CliRunner().invoke(ctl, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "out of fold on validation 1.090 against 1.110" in result.output
    assert "not ahead, so validation cannot tell them from 1/2" in result.output


def _heads(run):
    return load_checkpoint(run / "checkpoint.pt", with_backbone=False).embedder.heads_state_dict()


def test_training_is_reproducible_and_resume_equals_a_straight_run(trained, tmp_path, sample):
    out, summary = trained
    straight = copy_run(out, tmp_path / "straight", cache_only=True)
    again = train(sample, straight, config=CFG, progress=False)
    assert again.history == summary.history
    first, second = _heads(out), _heads(straight)
    assert all(torch.equal(first[k], second[k]) for k in first)

    resumed = copy_run(out, tmp_path / "resumed", cache_only=True)
    train(sample, resumed, config=CFG.replace(epochs=1), progress=False)
    done = train(sample, resumed, config=CFG, resume=True, progress=False)
    assert done.history == summary.history and done.best_epoch == summary.best_epoch
    final = torch.load(resumed / STATE_FILE, weights_only=False)["model"]
    reference = torch.load(out / STATE_FILE, weights_only=False)["model"]
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_the_loop_keeps_the_epoch_its_validation_callable_scores_best(trained, tmp_path, sample):
    out, _ = trained
    run = copy_run(out, tmp_path / "run", cache_only=True)
    cfg = CFG.replace(epochs=3)
    data = prepare_data(sample, run, cfg)
    strategy = strategy_for(cfg, data, torch.device("cpu"))
    pools = trainable_pairs(data, strategy.prepare(run))
    embedder, optimizer = strategy.build()
    scripted = iter([{"hr@10": 0.1}, {"hr@10": 0.6}, {"hr@10": 0.3}])
    seen = []

    def validate(model):
        seen.append(model)
        return next(scripted)

    done = fit(strategy, embedder, optimizer, pools, validate, run=RunLayout(run), checkpoint_config=cfg.to_dict(),
               done=Progress(), progress=False)
    assert seen == [embedder] * 3
    assert done.best["epoch"] == 2 and [h["val_hr@10"] for h in done.history] == [0.1, 0.6, 0.3]
    assert load_checkpoint(run / "checkpoint.pt", with_backbone=False).extra["epoch"] == 2


def test_every_mode_has_a_step_strategy():
    assert tuple(STRATEGIES) == MODES
    assert [STRATEGIES[m].trains_backbone for m in MODES] == [False, True]


def test_training_never_imports_the_evaluation_job():
    for path in TRAINING.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("jobs.evaluation") for n in names), path.name


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(ctl, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "does not exist" in result.output and "nope" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(ctl, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "is not a dataset dir" in result.output and "Traceback" not in result.output
    for bad, expected in ((["--dropout", "1.0"], "0<=x<1"), (["--hidden", "-1"], "x>=0"), (["--epochs", "0"], "x>=1"),
                          (["--attention", "soft"], "sharpness")):
        result = runner.invoke(ctl, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *bad])
        assert result.exit_code == 2 and bad[0] in result.output and expected in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_hard_mining_with_a_softmax_loss_is_reproducible_and_mines_from_each_pairs_pool(trained, tmp_path, sample):
    from jobs.training.frozen import mine_hard_pools
    out, _ = trained
    cfg = CFG.replace(loss="softmax", per_half_loss=True, mining="hard", warmup_epochs=1, hard_pool=3)
    first = train(sample, copy_run(out, tmp_path / "a", cache_only=True), config=cfg, progress=False)
    second = train(sample, copy_run(out, tmp_path / "b", cache_only=True), config=cfg, progress=False)
    assert first.history == second.history and len(first.history) == cfg.epochs
    assert first.hybrid["form"] == "fitted"
    run = tmp_path / "a"
    data = prepare_data(sample, run, cfg)
    strategy = strategy_for(cfg, data, torch.device("cpu"))
    pools = trainable_pairs(data, strategy.prepare(run))
    embedder = load_checkpoint(run / "checkpoint.pt", with_backbone=False).embedder
    mined = mine_hard_pools(embedder, data, pools, 3)
    assert mined == mine_hard_pools(embedder, data, pools, 3)
    for j, got in mined.items():
        assert len(got) == min(3, len(pools[j])) and set(got) <= set(pools[j])
        assert data.dataset.pairs[j].product_id not in got


def test_the_attention_sharpness_is_learnt_by_default_and_stays_the_papers_when_asked(trained, tmp_path, sample):
    out, _ = trained
    assert CFG.attention == "sharpness"
    learnt = load_checkpoint(out / "checkpoint.pt", with_backbone=False).embedder.attention_sharpness_by_name()
    assert any(abs(s - 1.0) > 1e-3 for s in learnt.values())
    run = copy_run(out, tmp_path / "paper", cache_only=True)
    train(sample, run, config=CFG.replace(attention="paper"), progress=False)
    kept = load_checkpoint(run / "checkpoint.pt", with_backbone=False).embedder.attention_sharpness_by_name()
    assert kept == dict.fromkeys(learnt, 1.0)


def test_each_scene_against_its_own_negatives_still_trains_and_differs_from_the_batch_default(trained, tmp_path,
                                                                                             sample):
    out, summary = trained
    assert CFG.shares_negatives                                    # the frozen default: the batch's negatives
    run = copy_run(out, tmp_path / "pair", cache_only=True)
    pair = train(sample, run, config=CFG.replace(negatives_from="pair"), progress=False)
    assert pair.history[-1]["loss"] < pair.history[0]["loss"]
    assert [h["loss"] for h in pair.history] != [h["loss"] for h in summary.history]
    assert json.loads((run / "config.json").read_text())["negatives_from"] == "pair"
