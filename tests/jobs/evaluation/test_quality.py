"""`ctl quality`: the seeds' figures summarised (mean, spread, each seed's intervals) and the table written."""
import json

import numpy as np
import pytest

from jobs.evaluation.quality import against_baseline, format_quality, shared_cache, spread, summarise_variant
from jobs.training.config import TrainConfig


def _report(seed):
    rng = np.random.default_rng(seed)
    methods = {m: {"fitb_expected": float(rng.random()), "hr@10": float(rng.random()), "hr@50": float(rng.random())}
               for m in ("hybrid", "paper", "global", "local", "backbone")}
    ci = {"diff": 0.01 * seed, "ci95": [-0.02, 0.03]}
    return {"methods": methods, "n_queries": 100,
            "comparisons": {p: {"fitb_expected": ci, "hr@10": ci} for p in ("hybrid - global", "hybrid - local",
                                                                             "hybrid - paper")},
            "presence": {"available": True, "mean_ap": 0.9, "mean_precision": 0.95, "mean_recall": 0.6},
            "classifier": {"hybrid": {"roc_auc": 0.8 + 0.01 * seed, "ece": 0.04}},
            "hybrid": {"local_weights": {"A": 0.5}}}


def _with_val(seed):
    report = _report(seed)
    report["val"] = _report(seed + 10)
    return report


def test_the_summary_holds_each_seed_and_their_mean_and_spread():
    reports = {s: _report(s) for s in (0, 1, 2)}
    summary = summarise_variant(reports)
    hr = [reports[s]["methods"]["hybrid"]["hr@10"] for s in (0, 1, 2)]
    assert summary["methods"]["hybrid"]["hr@10"]["mean"] == pytest.approx(np.mean(hr))
    assert summary["methods"]["hybrid"]["hr@10"]["std"] == pytest.approx(np.std(hr, ddof=1))
    assert summary["methods"]["hybrid"]["hr@10"]["per_seed"] == hr
    best = [max(reports[s]["methods"]["global"]["hr@10"], reports[s]["methods"]["local"]["hr@10"]) for s in (0, 1, 2)]
    assert summary["best_half"]["hr@10"]["per_seed"] == best
    assert summary["comparisons"]["hybrid - local"][2]["fitb_expected"]["diff"] == 0.02
    assert summary["classifier_hybrid"]["roc_auc"]["mean"] == pytest.approx(0.81)
    table = format_quality({"variants": {"default": {"settings": {}, **summary}}})
    assert "| hybrid | " in table and "| hybrid - paper | 2 | +0.020 [-0.020, +0.030]" in table
    assert spread([1.0])["std"] == 0.0
    assert "distance_roc_auc" not in summary["classifier_hybrid"] and "raw distance" not in table


def test_a_cohort_normalised_classifier_is_shown_beside_its_raw_distance():
    reports = {s: _report(s) for s in (0, 1)}
    for s, report in reports.items():
        report["classifier"]["hybrid"]["distance_roc_auc"] = 0.7 + 0.02 * s
    summary = summarise_variant(reports)
    assert summary["classifier_hybrid"]["distance_roc_auc"]["mean"] == pytest.approx(0.71)
    table = format_quality({"variants": {"default": {"settings": {}, **summary}}})
    assert "ROC-AUC 0.805 ± 0.007 (cohort-normalised; the raw distance 0.710 ± 0.014)" in table
    del reports[1]["classifier"]["hybrid"]["distance_roc_auc"]      # seeds calibrated both ways: no raw figure
    assert "distance_roc_auc" not in summarise_variant(reports)["classifier_hybrid"]


def test_validation_figures_are_summarised_beside_test_and_shown():
    reports = {s: _with_val(s) for s in (0, 1)}
    summary = summarise_variant(reports)
    val_hr = [reports[s]["val"]["methods"]["local"]["hr@10"] for s in (0, 1)]
    assert summary["val_methods"]["local"]["hr@10"]["per_seed"] == val_hr
    assert summary["methods"]["local"]["hr@10"]["per_seed"] != val_hr
    table = format_quality({"variants": {"default": {"settings": {}, **summary}}})
    assert "validation split" in table and f"{np.mean(val_hr):.3f}" in table


def _per_query(ranks, keys=None):
    keys = keys or [f"s{i}/p{i}" for i in range(len(ranks))]
    return {"keys": keys, "methods": {"hybrid": {"fitb_expected": [1.0 / (1 + r) for r in ranks], "rank": ranks}}}


def test_a_variant_is_paired_with_the_baseline_seed_by_seed_on_the_same_queries():
    base = {s: {**_report(s), "per_query": _per_query([0, 20, 60, 5])} for s in (0, 1)}
    other = {s: {**_report(s), "per_query": _per_query([0, 5, 30, 5])} for s in (0, 1, 2)}
    out = against_baseline(other, base, "test")
    assert sorted(out) == [0, 1]                          # seed 2 has no baseline run
    assert out[0]["hr@10"]["diff"] == pytest.approx(0.25) and out[0]["hr@50"]["diff"] == pytest.approx(0.25)
    del base[1]["per_query"]                              # a report written before per-query records
    other[0]["per_query"] = _per_query([0, 5, 30, 5], keys=["a", "b", "c", "d"])   # other queries: not paired
    assert against_baseline(other, base, "test") == {}
    summary = summarise_variant({s: other[s] for s in (0, 1)})
    summary["vs_baseline"] = {"test": out}
    table = format_quality({"variants": {"hard": {"settings": {}, **summary}}})
    assert "hybrid minus default's hybrid, test split" in table and "| 0 | +0." in table


def _run(out, variant, seed, **settings):
    run = out / variant / f"seed-{seed}"
    (run / "cache").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": seed, "data_seed": 0, **settings}))
    return run


def test_runs_share_a_feature_cache_only_with_the_same_backbone_and_views(tmp_path):
    multiscale = _run(tmp_path, "default", 0, backbone="efficientnet-lite0-ms")
    plain = _run(tmp_path, "plain", 1, backbone="efficientnet-lite0")
    assert shared_cache(tmp_path, TrainConfig(seed=2, data_seed=0, backbone="efficientnet-lite0"), 0) == plain
    assert shared_cache(tmp_path, TrainConfig(seed=2, data_seed=0, backbone="efficientnet-lite0-ms"), 0) == multiscale
    assert shared_cache(tmp_path, TrainConfig(seed=2, data_seed=0, scene_views=2), 0) is None
    assert shared_cache(tmp_path, TrainConfig(seed=2, data_seed=1), 1) is None
