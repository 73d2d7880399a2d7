"""The evaluation job: FITB and HR@K of the hybrid, global, local and backbone methods on a run's held-out queries."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from common import defaults
from common.devices import DEVICE_CHOICES, resolve_device
from common.errors import InputError
from common.files import write_json_atomic
from jobs.evaluation.report_plots import attention_figure, methods_bar_chart
from jobs.training.config import TrainConfig
from jobs.training.train import strategy_for
from jobs.training.training_data import Readable, cache_features, prepare_data, usable_queries
from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation import (
    FITB_NEGATIVES,
    KS,
    RANK_NEGATIVES,
    Query,
    category_lookup,
    compare_methods,
    per_query_scores,
    summarise,
)

SPLITS = ("test", "val")


def report_files(split: str) -> dict[str, str]:
    """File names of a split's report and plots: the test split's are the plain names, others carry the split."""
    suffix = "" if split == "test" else f"-{split}"
    return {"report": f"report{suffix}.json", "chart": f"report{suffix}.png", "attention": f"attention{suffix}.png"}


def protocol(queries: list[Query], *, split: str, seed: int, exclusion: str) -> dict:
    """How the figures were measured, written into the report beside them."""
    return {
        "split": split, "seed": seed, "fitb_negatives": FITB_NEGATIVES, "rank_negatives_max": RANK_NEGATIVES,
        "rank_negatives_mean": float(np.mean([len(q.rank_negatives) for q in queries])),
        "negatives": "same category as the positive, not in the scene", "scene_exclusion": exclusion,
        "ks": list(KS),
        "fitb_expected": "FITB averaged over every draw of 3 negatives from the HR@K candidates (no draw noise)",
        "comparisons": "paired per-query differences, 95% percentile bootstrap over queries (2000 resamples)",
    }


def run_evaluation(run_dir, *, data_dir=None, split: str = "test", seed: int | None = None,
                   plots: bool = True, device: str = "auto") -> dict:
    """Score every method on the run's `split` and write report.json, report.png and attention.png.

    Another split than test writes report-SPLIT.json and its plots beside them, so a look at the
    validation split never replaces the test report. The run's config is read tolerantly: a field
    this version does not know is ignored (with a warning), a missing one takes its default.
    """
    run_dir = Path(run_dir)
    started = time.time()
    checkpoint = run_dir / "checkpoint.pt"
    ckpt = load_checkpoint(checkpoint, with_backbone=False)
    saved = dict(ckpt.config)
    data_dir = Path(data_dir or saved.get("data", defaults.SAMPLE_DIR))
    cfg = TrainConfig.from_dict(saved, ignore=("data",))
    seed = cfg.seed if seed is None else seed
    dev = resolve_device(device)
    data = prepare_data(data_dir, run_dir, cfg)
    # Both modes: the frozen backbone's features score the untrained baseline and tell which images decode.
    cache_features(data, run_dir, cfg, dev)
    pairs = {"test": data.test_pairs, "val": data.val_pairs, "train": data.train_pairs}[split]
    queries = usable_queries(data, pairs, seed, Readable.from_features(data.scenes, data.products))
    if not queries:
        raise InputError(f"no usable {split} queries in {data_dir}")
    strategy = strategy_for(cfg, data, dev)
    embedder = load_checkpoint(checkpoint, device=dev).embedder if strategy.trains_backbone else ckpt.embedder
    emb = strategy.query_embeddings(embedder, queries)
    lookup = category_lookup(embedder)
    scores = per_query_scores(queries, emb, lookup)
    report = {
        "methods": {m: summarise(s) for m, s in scores.items()},
        "n_queries": len(queries),
        "comparisons": compare_methods(scores, seed),
        "protocol": protocol(queries, split=split, seed=seed, exclusion=cfg.exclusion),
        "checkpoint_sha256": ckpt.sha256,
        "data": str(data_dir),
        "backbone": cfg.backbone,
        "seconds": round(time.time() - started, 1),
    }
    names = report_files(split)
    if plots:
        methods_bar_chart(report, run_dir / names["chart"])
        attention_figure(data.dataset, queries, emb, lookup, run_dir / names["attention"], cfg.exclusion)
    # Last, so a report.json on disk means the whole evaluation (plots included) finished.
    write_json_atomic(run_dir / names["report"], report)
    return report


def format_table(methods: dict) -> str:
    """The methods' figures as a fixed-width table, one method a row."""
    cols = ["fitb", "fitb_expected", *[f"hr@{k}" for k in KS]]
    heads = {"fitb_expected": "fitb(exp)"}
    lines = [f"{'method':<10}" + "".join(f"{heads.get(c, c):>10}" for c in cols)]
    for name, m in methods.items():
        lines.append(f"{name:<10}" + "".join(f"{m[c]:>10.3f}" for c in cols))
    return "\n".join(lines)


def format_comparisons(comparisons: dict) -> str:
    """One line per paired comparison: mean difference and its 95% interval."""
    lines = []
    for name, metrics in comparisons.items():
        parts = [f"{metric} {m['diff']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]" for metric, m in metrics.items()]
        lines.append(f"{name:<18}" + "   ".join(parts))
    return "\n".join(lines)


@click.command("evaluate")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=defaults.RUN_DIR,
              show_default=True, help="training run folder (holds checkpoint.pt and split.json)")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="dataset folder (default: the one the run was trained on)")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--no-plots", is_flag=True, help="skip report.png and attention.png")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
def evaluate_command(run_dir, data_dir, split, no_plots, device):
    """FITB and HR@K of hybrid, global, local and backbone distances; writes report.json and plots."""
    report = run_evaluation(run_dir, data_dir=data_dir, split=split, plots=not no_plots, device=device)
    click.echo(f"{report['n_queries']} {split} queries, about {report['protocol']['rank_negatives_mean']:.0f} "
               f"same-category negatives each for HR@K, {FITB_NEGATIVES} for FITB (chance 0.25)")
    click.echo(format_table(report["methods"]))
    click.echo("paired differences on the same queries, 95% bootstrap intervals:")
    click.echo(format_comparisons(report["comparisons"]))
    names = report_files(split)
    click.echo(f"wrote {Path(run_dir) / names['report']}" + ("" if no_plots else f", {names['chart']}, {names['attention']}"))
