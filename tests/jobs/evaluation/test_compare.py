"""`ctl compare`: one run minus another, paired on the same queries, from the runs' report files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import main as ctl
from jobs.evaluation.compare import compare_reports

KEYS = [f"s{i}/p{i}" for i in range(40)]


def fake_report(seed: int, *, keys=KEYS, through: bool = False) -> dict:
    """A report as `ctl evaluate` writes it, cut to what a comparison reads (per-query figures, seeded)."""
    rng = np.random.default_rng(seed)
    methods = {m: {"fitb_expected": rng.uniform(0, 1, len(keys)).round(6).tolist(),
                   "rank": rng.integers(0, 80, len(keys)).tolist()} for m in ("hybrid", "global")}
    report = {"per_query": {"keys": list(keys), "methods": methods}}
    if through:
        ranks = rng.integers(0, 300, len(keys)).tolist()
        report["through_index"] = {"candidates": 200, "per_query": {
            "keys": list(keys), "exhaustive": ranks, "two_stage": [r if r < 200 else None for r in ranks],
            "sweep": {str(c): [r if r < c else None for r in ranks] for c in (200, 400)}}}
    return report


def test_the_differences_are_the_means_of_the_per_query_differences():
    a, b = fake_report(1, through=True), fake_report(2, through=True)
    got = compare_reports(a, b, method="global")
    fa, fb = (np.array(r["per_query"]["methods"]["global"]["fitb_expected"]) for r in (a, b))
    assert got["sampled"]["fitb_expected"]["diff"] == pytest.approx(float((fa - fb).mean()))
    ra, rb = (np.array(r["per_query"]["methods"]["global"]["rank"]) for r in (a, b))
    assert got["sampled"]["hr@10"]["diff"] == pytest.approx(float(((ra < 10) * 1.0 - (rb < 10)).mean()))
    hits = [np.array([r is not None and r < 50 for r in rep["through_index"]["per_query"]["two_stage"]], float)
            for rep in (a, b)]
    assert got["through_index"]["two_stage"]["hr@50"]["diff"] == pytest.approx(float((hits[0] - hits[1]).mean()))
    lo, hi = got["sampled"]["fitb_expected"]["ci95"]
    assert lo <= got["sampled"]["fitb_expected"]["diff"] <= hi


def test_a_run_against_itself_differs_by_nothing_and_without_an_index_says_why():
    a = fake_report(3)
    got = compare_reports(a, a)
    assert all(d["diff"] == 0.0 and d["ci95"] == [0.0, 0.0] for d in got["sampled"].values())
    assert got["through_index"] is None and "--through-index" in got["through_index_note"]


def _run(tmp_path, name, report):
    run = tmp_path / name
    run.mkdir()
    if report is not None:
        (run / "report.json").write_text(json.dumps(report))
    return str(run)


def test_cli_prints_both_comparisons(tmp_path):
    a, b = _run(tmp_path, "a", fake_report(1, through=True)), _run(tmp_path, "b", fake_report(2, through=True))
    result = CliRunner().invoke(ctl, ["compare", a, b])
    assert result.exit_code == 0, result.output
    assert "on the same 40 queries" in result.output
    assert "sampled negatives" in result.output and result.output.count("two-stage C=200") == 1
    assert "two-stage C=400" in result.output


@pytest.mark.parametrize("second, code, says", [
    (None, 1, "no report"),
    ({"methods": {}}, 1, "no per-query figures"),
    (fake_report(2, keys=KEYS[::-1]), 2, "same queries"),
])
def test_cli_errors_name_the_problem_in_one_line(tmp_path, second, code, says):
    a, b = _run(tmp_path, "a", fake_report(1)), _run(tmp_path, "b", second)
    result = CliRunner().invoke(ctl, ["compare", a, b])
    assert result.exit_code == code and says in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
