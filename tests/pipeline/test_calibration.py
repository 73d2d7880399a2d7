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


def test_cohort_normalise_is_the_explicit_per_scene_z_score_and_ignores_each_scenes_scale_and_offset():
    from pipeline.calibration import cohort_normalise

    rng = np.random.default_rng(0)
    d, cohort_d = rng.normal(1.0, 0.2, (4, 6)), rng.normal(1.1, 0.3, (4, 9))
    z = cohort_normalise(d, cohort_d)
    for s in range(4):
        mean = sum(cohort_d[s]) / 9
        std = (sum((x - mean) ** 2 for x in cohort_d[s]) / 9) ** 0.5
        assert z[s] == pytest.approx([(x - mean) / std for x in d[s]])
    # A scene whose distances all sit higher, or spread wider, normalises to the same values: what one
    # threshold on raw distances cannot see.
    scale, offset = rng.uniform(0.5, 2.0, (4, 1)), rng.uniform(-0.5, 0.5, (4, 1))
    assert cohort_normalise(scale * d + offset, scale * cohort_d + offset) == pytest.approx(z)
    # A cohort at one distance (no spread) does not divide by zero.
    assert np.isfinite(cohort_normalise(d[:1], np.ones((1, 3)))).all()
    with pytest.raises(ValueError, match="leading axes"):
        cohort_normalise(d, cohort_d[:3])


def test_a_cohort_is_drawn_within_each_category_reproducibly_whatever_the_listing_order():
    from pipeline.calibration import draw_cohort

    products = {"hat": [f"h{i}" for i in range(40)], "bag": ["b1", "b2"], "none": []}
    drawn = draw_cohort(products, size=10, seed=5)
    assert set(drawn) == {"hat", "bag"}                                   # an empty category has no cohort
    assert len(drawn["hat"]) == len(set(drawn["hat"])) == 10 and set(drawn["hat"]) <= set(products["hat"])
    assert drawn["bag"] == ("b1", "b2")                                   # fewer than size: all of them
    shuffled = {k: list(reversed(v)) for k, v in reversed(list(products.items()))}
    assert draw_cohort(shuffled, size=10, seed=5) == drawn
    assert draw_cohort(products, size=10, seed=6) != drawn
    with pytest.raises(ValueError, match="at least 1"):
        draw_cohort(products, size=0)


def test_a_calibration_file_carries_its_cohort_exactly_and_an_older_file_still_loads(tmp_path):
    from pipeline.calibration import Cohort

    rng = np.random.default_rng(1)
    vectors = {"hat": rng.normal(size=(3, 8)).astype(np.float32), "bag": rng.normal(size=(1, 8)).astype(np.float32)}
    cohort = Cohort({"hat": ("a", "b", "c"), "bag": ("d",)}, vectors)
    cal = Calibrations("abc", {"hybrid": Platt(-2.0, 1.0, 0.45)}, {"calibration": "z"}, cohort)
    back = load_calibrations(cal.save(tmp_path / "calibration.json"), checkpoint_sha256="abc")
    assert back.cohort.product_ids == cohort.product_ids and back.info == cal.info
    for name in cohort.categories:
        assert np.array_equal(back.cohort.vectors[name], cohort.vectors[name])
    data = json.loads((tmp_path / "calibration.json").read_text())
    data["format"] = "complete-the-look/calibration-v1"
    del data["cohort"]
    (tmp_path / "v1.json").write_text(json.dumps(data))
    old = load_calibrations(tmp_path / "v1.json", checkpoint_sha256="abc")
    assert old.cohort is None and old.methods == cal.methods
    data["cohort"] = {"hat": {"product_ids": ["a"], "shape": [2, 8], "vectors_f32le_base64": "AAAA"}}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="malformed cohort"):
        load_calibrations(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="3 ids but vectors of shape"):
        Cohort({"hat": ("a", "b", "c")}, {"hat": np.zeros((2, 8), np.float32)})
