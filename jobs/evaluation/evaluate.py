"""The evaluation job: FITB and HR@K of the hybrid, global, local and backbone methods on a run's held-out queries."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch

from common import defaults
from common.devices import DEVICE_CHOICES, resolve_device
from common.errors import InputError
from common.files import write_json_atomic
from jobs.evaluation.report_plots import attention_figure, methods_bar_chart, reliability_diagram
from jobs.evaluation.through_index import through_index_report
from jobs.training.calibrate import METHODS as CLASSIFIER_METHODS
from jobs.training.calibrate import calibrate_run
from jobs.training.config import TrainConfig
from jobs.training.presence import evaluate_presence
from jobs.training.run_layout import RunLayout
from jobs.training.train import strategy_for
from jobs.training.training_data import Readable, cache_features, prepare_data, usable_queries
from pipeline.calibration import (
    BINS,
    CalibrationError,
    Calibrations,
    expected_calibration_error,
    load_calibrations,
    reliability,
    weighted_counts,
)
from pipeline.calibration import FILE as CALIBRATION_FILE
from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation import (
    FITB_NEGATIVES,
    KS,
    METHODS,
    RANK_NEGATIVES,
    Query,
    category_lookup,
    classifier_samples,
    cohort_distances,
    compare_methods,
    distance_matrices,
    per_query_record,
    per_query_scores,
    summarise,
)
from pipeline.metrics import roc_auc

SPLITS = ("test", "val")


def report_files(split: str) -> dict[str, str]:
    """File names of a split's report and plots: the test split's are the plain names, others carry the split."""
    suffix = "" if split == "test" else f"-{split}"
    return {"report": f"report{suffix}.json", "chart": f"report{suffix}.png", "attention": f"attention{suffix}.png",
            "reliability": f"reliability{suffix}.png"}


def run_calibrations(run_dir: Path, sha: str, refit, *, force: bool = False) -> tuple[Calibrations, bool]:
    """The run's calibration.json when it was fitted for this checkpoint (and not `force`); else `refit()` (written).
    -> (it, refitted)"""
    if force:
        return refit(), True
    try:
        return load_calibrations(run_dir / CALIBRATION_FILE, checkpoint_sha256=sha), False
    except CalibrationError:
        return refit(), True


def classifier_report(queries: list[Query], emb, matrices: dict, calibrations: Calibrations, *,
                      category_embedding=None, local_weights: dict[str, float] | None = None) -> dict:
    """The classifier "does this product complete the scene?" on `queries`, per distance: ROC-AUC of its
    probability, precision, recall and F1 at the validation threshold, expected calibration error and the
    reliability bins; with the calibration's cohort (category_embedding then needed), also the raw
    distance's ROC-AUC (`distance_roc_auc`), what one threshold on the distance itself would reach."""
    cohort = calibrations.cohort
    normalisers = dict.fromkeys(CLASSIFIER_METHODS) if cohort is None else cohort_distances(
        emb, queries, category_embedding, {c: torch.from_numpy(v) for c, v in cohort.vectors.items()},
        CLASSIFIER_METHODS, local_weights=local_weights)
    out = {}
    for method in CLASSIFIER_METHODS:
        platt = calibrations.methods[method]
        d, y, w = classifier_samples(matrices[method], queries, emb, normalisers[method])
        p = platt.probability(d)
        raw = {} if cohort is None else {"distance_roc_auc": roc_auc(y, -classifier_samples(
            matrices[method], queries, emb)[0], w)}
        out[method] = {"roc_auc": roc_auc(y, -d, w), **raw, **weighted_counts(p, y, w, platt.threshold),
                       "threshold": platt.threshold,
                       ("distance_threshold" if cohort is None else "normalised_distance_threshold"):
                           platt.distance_threshold,
                       "ece": expected_calibration_error(p, y, w), "reliability": reliability(p, y, w)}
    return out


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
                   plots: bool = True, device: str = "auto", through_index=None,
                   candidates: int = defaults.CANDIDATES, stage1: str = defaults.STAGE1,
                   refit_calibration: bool = False) -> dict:
    """Score every method on the run's `split` and write report.json, report.png, attention.png and
    reliability.png.

    Besides the ranking figures, the report holds the presence head's per-category average precision
    on the split's scenes (`presence`) and the classifier's figures (`classifier`: ROC-AUC, precision and
    recall at the threshold, expected calibration error, for hybrid, global and local) with the run's
    calibration.json (fitted on validation; refitted here when missing or made for another checkpoint).
    `through_index` (an index directory built from this checkpoint) adds `through_index`: every query's
    positive ranked among all the catalogue products of its category by the real Retriever, two-stage and
    exhaustive, and the candidate-cut curve (jobs.evaluation.through_index).

    Another split than test writes report-SPLIT.json and its plots beside them, so a look at the
    validation split never replaces the test report. The run's config is read tolerantly: a field
    this version does not know is ignored (with a warning), a missing one takes its default.
    """
    run_dir = Path(run_dir)
    started = time.time()
    checkpoint = RunLayout(run_dir).checkpoint
    ckpt = load_checkpoint(checkpoint, with_backbone=False)
    saved = dict(ckpt.config)
    data_dir = Path(data_dir or saved.get("data", defaults.SAMPLE_DIR))
    cfg = TrainConfig.from_dict(saved, ignore=("data",))
    seed = cfg.split_seed if seed is None else seed
    dev = resolve_device(device)
    data = prepare_data(data_dir, run_dir, cfg)
    # Both modes: the frozen backbone's features score the untrained baseline and tell which images decode.
    cache_features(data, run_dir, cfg, dev)
    pairs = {"test": data.test_pairs, "val": data.val_pairs, "train": data.train_pairs}[split]
    readable = Readable.from_features(data.scenes, data.products)
    queries = usable_queries(data, pairs, seed, readable)
    if not queries:
        raise InputError(f"no usable {split} queries in {data_dir}")
    strategy = strategy_for(cfg, data, dev)
    embedder = load_checkpoint(checkpoint, device=dev).embedder if strategy.trains_backbone else ckpt.embedder
    emb = strategy.query_embeddings(embedder, queries)
    lookup = category_lookup(embedder)
    weights = embedder.local_weights_by_name()
    matrices = distance_matrices(emb, queries, lookup, METHODS, local_weights=weights)
    scores = per_query_scores(queries, emb, lookup, matrices=matrices)
    calibrations, refitted = run_calibrations(
        run_dir, ckpt.sha256, force=refit_calibration,
        refit=lambda: calibrate_run(run_dir, data, cfg, strategy, embedder, readable, checkpoint_sha256=ckpt.sha256))
    report = {
        "methods": {m: summarise(s) for m, s in scores.items()},
        "n_queries": len(queries),
        "comparisons": compare_methods(scores, seed),
        "per_query": per_query_record(queries, scores),
        "protocol": protocol(queries, split=split, seed=seed, exclusion=cfg.exclusion),
        "presence": evaluate_presence(embedder, data, run_dir, cfg, dev, split=split),
        "classifier": classifier_report(queries, emb, matrices, calibrations, category_embedding=lookup,
                                        local_weights=weights),
        "classifier_protocol": {
            "question": "does this product complete the scene? (the pair's positive vs its same-category products "
                        "not in the scene, the negatives of one pair weighing one positive: even odds)",
            "calibration": calibrations.info.get("calibration"), "fitted_on": calibrations.info.get("fitted_on"),
            "threshold_rule": calibrations.info.get("threshold_rule"), "refitted_by_evaluate": refitted,
            "ece": f"expected calibration error over {BINS} equal-width probability bins, weighted"},
        "hybrid": {"form": ckpt.hybrid_form, "local_weights": weights,
                   "definition": "d_h = (1 - w_c) d_g + w_c d_l; 'paper' is w = 1/2",
                   # the fitted weights against 1/2 out of fold on validation (absent in older checkpoints)
                   **({"out_of_fold": oof} if (oof := ckpt.extra.get("hybrid", {}).get("out_of_fold")) else {})},
        "checkpoint_sha256": ckpt.sha256,
        "data": str(data_dir),
        "backbone": cfg.backbone,
    }
    if through_index is not None:
        report["through_index"] = through_index_report(
            data.dataset, queries, checkpoint=checkpoint, index_dir=through_index, exclusion=cfg.exclusion,
            device=dev, candidates=candidates, stage1=stage1)
    report["seconds"] = round(time.time() - started, 1)
    names = report_files(split)
    if plots:
        methods_bar_chart(report, run_dir / names["chart"])
        attention_figure(data.dataset, queries, emb, lookup, run_dir / names["attention"], cfg.exclusion,
                         local_weights=weights)
        reliability_diagram(report, run_dir / names["reliability"])
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
        parts = [
            f"{metric} {m['diff']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]" for metric, m in metrics.items()
        ]
        lines.append(f"{name:<18}" + "   ".join(parts))
    return "\n".join(lines)


def format_extras(report: dict) -> str:
    """Presence, classifier and through-index figures of a report, a few lines each (empty when absent)."""
    lines = []
    presence = report.get("presence") or {}
    if presence.get("available"):
        lines.append(f"category presence on {presence['n_scenes']} {presence['split']} scenes (unmasked): mean AP "
                     f"{presence['mean_ap']:.3f} against a mean category frequency of {presence['mean_frequency']:.3f}")
    elif presence:
        lines.append(f"category presence: {presence.get('note')}")
    classifier = report.get("classifier") or {}
    if classifier:
        lines.append("does the product complete the scene? (even odds; threshold fitted on validation)")
        lines.append(f"{'distance':<10}{'roc_auc':>10}{'precision':>11}{'recall':>10}{'ece':>8}")
        for name, m in classifier.items():
            lines.append(f"{name:<10}{m['roc_auc']:>10.3f}{m['precision']:>11.3f}{m['recall']:>10.3f}{m['ece']:>8.3f}")
    through = report.get("through_index")
    if through:
        lines.append(f"through the index ({through['n_products']} products, {through['factory']}): each positive "
                     f"among every product of its category, {through['n_queries']} queries, stage 1 by "
                     f"{through.get('stage1', 'global')} distance")
        for way in ("two_stage", "exhaustive"):
            m = through[way]
            label = f"C={through['candidates']}" if way == "two_stage" else "exhaustive"
            spans = through.get("intervals", {}).get(way, {})
            lines.append(f"  {label:<11}" + "  ".join(
                f"{key} {value:.3f}" + (f" [{spans[key][0]:.3f}, {spans[key][1]:.3f}]" if key in spans else "")
                for key, value in m.items()))
        for row in through.get("candidate_sweep", []):
            diffs = "  ".join(f"{key} {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                              for key, d in row["minus_exhaustive"].items())
            lines.append(f"  C={row['candidates']:<9} hr@10 {row['hr@10']:.3f}  hr@50 {row['hr@50']:.3f}  "
                         f"minus exhaustive: {diffs}")
        if "agreement" in through:
            smallest = through["agreement"]["smallest_c"]
            lines.append(f"  two-stage within {through['agreement']['tolerance']} of exhaustive (hr@10, hr@50): "
                         + (f"from C={smallest}" if smallest else "at none of the C tried"))
        for name, curve in through["candidate_cut"].items():
            points = ", ".join(f"C={row['candidates']}: {row['overlap']:.3f}" for row in curve)
            lines.append(f"  top-{through['k']} overlap with exhaustive, {name.replace('_', ' ')}: {points}")
        if "default_candidates" in through:
            dc = through["default_candidates"]
            used = "; ".join(f"{label} C={'/'.join(map(str, cs))}" for label, cs in dc["candidates"].items())
            diffs = "  ".join(f"{key} {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                              for key, d in dc["minus_exhaustive"].items())
            lines.append(f"  the default C ({used}): hr@10 {dc['hr@10']:.3f}  hr@50 {dc['hr@50']:.3f}  minus "
                         f"exhaustive: {diffs}; top-{through['k']} overlap per category "
                         f"{dc['overlap']['per_category']:.3f}, flat {dc['overlap']['flat']:.3f}")
    return "\n".join(lines)


@click.command("evaluate")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=defaults.RUN_DIR,
              show_default=True, help="training run folder (holds checkpoint.pt and split.json)")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="dataset folder (default: the one the run was trained on)")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--no-plots", is_flag=True, help="skip report.png and attention.png")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("--through-index", "through_index", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="also rank each positive among every catalogue product of its category through "
                                 "this index (built from the run's checkpoint): two-stage vs exhaustive, and the "
                                 "candidate-cut curve")
@click.option("--candidates", type=click.IntRange(min=1), default=defaults.CANDIDATES, show_default=True,
              help="with --through-index: stage-1 candidates of the two-stage ranking (as ctl-retrieve and ctl serve)")
@click.option("--stage1", type=click.Choice(defaults.STAGE1_MODES), default=defaults.STAGE1, show_default=True,
              help="with --through-index: what stage 1 searches by, each category's hybrid query or the scene's "
                   "global embedding (the paper's pipeline)")
@click.option("--refit-calibration", is_flag=True,
              help="fit the classifier's calibration.json again on validation even when it matches the checkpoint "
                   "(e.g. a run calibrated before cohort normalisation)")
def evaluate_command(run_dir, data_dir, split, no_plots, device, through_index, candidates, stage1,
                     refit_calibration):
    """FITB and HR@K of hybrid, global, local and backbone distances; writes report.json and plots."""
    report = run_evaluation(run_dir, data_dir=data_dir, split=split, plots=not no_plots, device=device,
                            through_index=through_index, candidates=candidates, stage1=stage1,
                            refit_calibration=refit_calibration)
    click.echo(f"{report['n_queries']} {split} queries, about {report['protocol']['rank_negatives_mean']:.0f} "
               f"same-category negatives each for HR@K, {FITB_NEGATIVES} for FITB (chance 0.25)")
    click.echo(format_table(report["methods"]))
    click.echo("paired differences on the same queries, 95% bootstrap intervals:")
    click.echo(format_comparisons(report["comparisons"]))
    for line in format_extras(report).splitlines():
        click.echo(line)
    names = report_files(split)
    click.echo(f"wrote {Path(run_dir) / names['report']}" + ("" if no_plots else
               f", {names['chart']}, {names['attention']}, {names['reliability']}"))
