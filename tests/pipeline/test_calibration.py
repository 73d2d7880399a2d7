"""The classifier's calibration against explicit loops: Platt's likelihood equations, the best-F1 threshold by brute
force, the calibration error bin by bin, and the run's calibration file."""
import json

import numpy as np
import pytest

from pipeline.calibration import (
    FORMAT,
    CalibrationError,
    Calibrations,
    Platt,
    best_f1_threshold,
    expected_calibration_error,
    fit_platt,
    load_calibrations,
    reliability,
    weighted_counts,
)


def samples(seed=0, n=400, shift=0.6):
    """Distances where positives sit nearer than negatives, with uneven weights."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    d = rng.normal(1.2, 0.3, n) - shift * y
    w = np.where(y > 0, 1.0, rng.uniform(0.1, 0.5, n))
    return d, y, w


def test_platt_solves_the_weighted_likelihood_equations():
    d, y, w = samples()
    platt = fit_platt(d, y, w)
    p = platt.probability(d)
    # The gradient of the weighted log-likelihood, one sample at a time.
    g_b = sum(wi * (pi - yi) for wi, pi, yi in zip(w, p, y, strict=True))
    g_a = sum(wi * (pi - yi) * di for wi, pi, yi, di in zip(w, p, y, d, strict=True))
    assert abs(g_b) < 1e-6 * w.sum() and abs(g_a) < 1e-3 * w.sum()
    assert platt.a < 0
    # A nearby (a, b) has a lower likelihood.
    def loglik(a, b):
        q = 1 / (1 + np.exp(-(a * d + b)))
        return float(np.sum(w * (y * np.log(q) + (1 - y) * np.log(1 - q))))
    best = loglik(platt.a, platt.b)
    for da, db in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        assert loglik(platt.a + da, platt.b + db) < best


def test_probability_is_monotone_in_the_distance_and_the_decision_follows_it():
    d, y, w = samples(1)
    platt = fit_platt(d, y, w)
    grid = np.linspace(d.min() - 1, d.max() + 1, 500)
    assert (np.diff(platt.probability(grid)) <= 0).all()
    t = Platt(platt.a, platt.b, 0.4)
    assert (t.decide(grid) == (t.probability(grid) >= 0.4)).all()
    assert t.probability(t.distance_threshold) == pytest.approx(0.4)


def test_a_distance_that_ranks_backwards_gets_a_flat_probability():
    d, y, w = samples(2, shift=-0.6)          # positives farther: the unconstrained slope would be positive
    platt = fit_platt(d, y, w)
    assert platt.a == 0.0
    assert platt.probability(d) == pytest.approx(np.full(len(d), np.average(y, weights=w)))


def test_best_f1_threshold_is_the_brute_force_best():
    d, y, w = samples(3, n=120)
    p = fit_platt(d, y, w).probability(d)
    t = best_f1_threshold(p, y, w)

    def f1(threshold):
        tp = sum(wi for pi, yi, wi in zip(p, y, w, strict=True) if pi >= threshold and yi)
        fp = sum(wi for pi, yi, wi in zip(p, y, w, strict=True) if pi >= threshold and not yi)
        fn = sum(wi for pi, yi, wi in zip(p, y, w, strict=True) if pi < threshold and yi)
        return 2 * tp / (2 * tp + fp + fn)
    brute = max(f1(c) for c in p)
    assert f1(t) == pytest.approx(brute)
    assert weighted_counts(p, y, w, t)["f1"] == pytest.approx(brute)
    assert t == max(c for c in p if f1(c) == pytest.approx(brute))   # the highest of the best


def test_calibration_error_bin_by_bin():
    rng = np.random.default_rng(4)
    p, y, w = rng.random(300), (rng.random(300) < 0.4).astype(float), rng.uniform(0.5, 2, 300)
    expected = 0.0
    for b in range(10):
        inside = [i for i in range(300) if min(int(p[i] * 10), 9) == b]
        if inside:
            wb = sum(w[i] for i in inside)
            gap = sum(w[i] * y[i] for i in inside) / wb - sum(w[i] * p[i] for i in inside) / wb
            expected += wb / w.sum() * abs(gap)
    assert expected_calibration_error(p, y, w) == pytest.approx(expected)
    bins = reliability(p, y, w)
    assert len(bins) == 10 and sum(b["share"] for b in bins) == pytest.approx(1.0)
    assert expected_calibration_error(np.full(4, 0.5), np.array([1, 0, 1, 0.0])) == 0.0


def test_calibration_file_round_trip_and_refusals(tmp_path):
    cal = Calibrations("abc", {"hybrid": Platt(-2.0, 1.0, 0.45)}, {"threshold_rule": "best F1"})
    path = cal.save(tmp_path / "calibration.json")
    assert json.loads(path.read_text())["format"] == FORMAT
    back = load_calibrations(path, checkpoint_sha256="abc")
    assert back.methods == cal.methods and back.info == cal.info
    with pytest.raises(CalibrationError, match="fitted for checkpoint sha256 abc, not xyz"):
        load_calibrations(path, checkpoint_sha256="xyz")
    with pytest.raises(CalibrationError, match="no calibration at"):
        load_calibrations(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CalibrationError, match="not a readable calibration file"):
        load_calibrations(tmp_path / "bad.json")


@pytest.mark.parametrize("seed", range(4))
def test_precision_threshold_is_the_brute_force_lowest_threshold_reaching_the_precision(seed):
    from pipeline.calibration import precision_threshold
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.5
    p = np.round(np.clip(0.5 * y + rng.random(60) * 0.6, 0, 1), 2)     # rounded: ties to handle
    for target, min_yes in ((0.9, 1), (0.9, 5), (0.75, 3), (1.0, 1)):
        ok = [t for t in np.unique(p) if (p >= t).sum() >= min_yes and y[p >= t].mean() >= target]
        got = precision_threshold(p, y, precision=target, min_yes=min_yes)
        assert got == (min(ok) if ok else None)
    assert precision_threshold(np.array([0.9, 0.8]), np.array([False, False]), precision=0.9) is None
