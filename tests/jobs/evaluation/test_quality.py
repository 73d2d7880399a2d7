"""`ctl quality`: the seeds' figures summarised (mean, spread, each seed's intervals) and the table written."""
import numpy as np
import pytest

from jobs.evaluation.quality import format_quality, spread, summarise_variant


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
