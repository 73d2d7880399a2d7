"""`ctl compare`: one run minus another on the same queries, with paired bootstrap intervals.

Two runs evaluated on one split of the same data (the same data seed: the same queries and negatives)
differ query by query; pairing their per-query figures gives intervals a fraction as wide as
comparing two means with their own intervals. Read from the runs' report files (`ctl evaluate`
writes the per-query figures): the sampled protocol (expected FITB, HR@10, HR@50, any method), and
through the index (HR@10, HR@50, exhaustive and two-stage) when both were evaluated through one.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from common.errors import ArtifactError, InputError
from jobs.evaluation.evaluate import SPLITS, report_files
from jobs.evaluation.through_index import compare_through_index
from pipeline.evaluation import compare_runs

METHODS = ("hybrid", "paper", "global", "local", "backbone")


def read_report(run: Path, split: str) -> dict:
    """A run's report for `split`, or an error that says how to make one."""
    path = Path(run) / report_files(split)["report"]
    if not path.is_file():
        raise ArtifactError(f"{path}: no report", hint=f"run `ctl evaluate --run {run} --split {split}` first")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path}: unreadable report ({error})") from None


def compare_reports(a: dict, b: dict, *, method: str = "hybrid") -> dict:
    """a minus b: {"sampled": compare_runs(...), "through_index": compare_through_index(...) or None, "why"}."""
    for name, report in (("first", a), ("second", b)):
        if "per_query" not in report:
            raise ArtifactError(f"the {name} run's report has no per-query figures (evaluated by an older version)",
                                hint="run `ctl evaluate` on it again")
        if method not in report["per_query"]["methods"]:
            raise InputError(f"the {name} run's report has no method {method!r}; it has "
                             f"{', '.join(report['per_query']['methods'])}")
    try:
        sampled = compare_runs(a["per_query"], b["per_query"], method=method)
    except ValueError as error:
        raise InputError(f"{error}: evaluate both on the same data and split") from None
    through, why = None, None
    ta, tb = a.get("through_index"), b.get("through_index")
    if not (ta and tb):
        why = "both runs need `ctl evaluate --through-index`"
    else:
        try:
            through = compare_through_index(ta, tb)
        except ValueError as error:
            why = str(error)
    return {"method": method, "n_queries": len(a["per_query"]["keys"]), "sampled": sampled,
            "through_index": through, "through_index_note": why}


def _cell(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def format_comparison(result: dict, first: str, second: str) -> str:
    """The comparison as a few lines of text."""
    lines = [f"{first} minus {second}, {result['method']}, on the same {result['n_queries']} queries "
             "(95% paired bootstrap intervals):",
             "  sampled negatives  " + "  ".join(f"{k} {_cell(d)}" for k, d in result["sampled"].items())]
    through = result["through_index"]
    if through is None:
        lines.append(f"  through the index: not compared ({result['through_index_note']})")
    else:
        c_a, c_b = through["candidates"]
        for how, label in (("exhaustive", "exhaustive"), ("two_stage", f"two-stage C={c_a}" +
                                                          ("" if c_a == c_b else f" vs {c_b}"))):
            lines.append(f"  {label:<19}" + "  ".join(f"{k} {_cell(d)}" for k, d in through[how].items()))
        for c, diffs in through.get("sweep", {}).items():
            if c_a == c_b == int(c):        # the line above already
                continue
            lines.append(f"  {'two-stage C=' + c:<19}" + "  ".join(f"{k} {_cell(d)}" for k, d in diffs.items()))
    return "\n".join(lines)


@click.command("compare")
@click.argument("first", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("second", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--method", type=click.Choice(METHODS), default="hybrid", show_default=True)
def compare_command(first, second, split, method):
    """One run minus another on the same queries: paired intervals, sampled and through the index."""
    result = compare_reports(read_report(first, split), read_report(second, split), method=method)
    click.echo(format_comparison(result, str(first), str(second)))
