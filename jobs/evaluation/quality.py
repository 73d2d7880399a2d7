"""`ctl quality`: the headline table over several training seeds (mean and spread), each seed's paired intervals.

Every (variant, seed) is a run folder under --out, trained and evaluated once: a finished run (its
report.json) is read back, an interrupted one resumes, so the command can be stopped and started again.
By default every run shares one data seed (the split, the augmented views, the queries: --data-seed),
so the seeds differ in what training draws (initialisation, batches, negatives, dropout) and every
run is measured on the same test queries; they then share one feature cache (hard links), and only
the first run pays for it. --vary-data gives each seed its own split and cache instead.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import click
import numpy as np

from common.errors import InputError
from common.files import write_json_atomic, write_text_atomic
from jobs.evaluation.evaluate import run_evaluation
from jobs.training.config import TrainConfig
from jobs.training.run_layout import RunLayout
from jobs.training.train import train
from pipeline.evaluation import compare_runs

# The variants measured before the sixth round (docs/quality.md) ranked each scene against its own negatives: they
# are pinned to it, so their documented figures stay what the command reproduces.
PAIR = {"negatives_from": "pair"}
# name -> settings over TrainConfig's defaults. "default" is what `make train` runs (the multi-scale backbone).
VARIANTS: dict[str, dict] = {
    "default": {},
    "pair-negatives": PAIR,   # the default of the fifth round: each scene against its own 16 negatives only
    "batch128": {"batch_size": 128},   # twice the batch: twice the shared negatives
    "batch-negatives32": {"negatives": 32},   # 32 drawn a pair: about 264 shared a scene at batch 64
    "batch-t01": {"temperature": 0.1},        # a sharper softmax over the larger set of negatives
    "batch-hard": {"mining": "hard"},         # half of each pair's drawn negatives its nearest wrong ones, shared
    "symmetric": {"symmetric_loss": True},    # also each positive product ranking its scene among the batch's
    "batch-per-half": {"per_half_loss": True},   # the loss on d_g and on d_l alone too, over the shared negatives
    # the default of the second and third rounds: triplet loss, 4 negatives, the paper's attention
    "paper-attention": {**PAIR, "loss": "triplet", "negatives": 4, "attention": "paper"},
    "triplet": {**PAIR, "loss": "triplet", "negatives": 4},   # the fourth round's learnt sharpness, triplet loss
    # measured in the fourth round against softmax at T = 0.1 (the default for an hour), so pinned to it
    "softmax-t01": {**PAIR, "temperature": 0.1},
    "softmax32": {**PAIR, "negatives": 32, "temperature": 0.1},
    "softmax-t05": {**PAIR, "temperature": 0.05},
    "softmax-t03": {**PAIR, "temperature": 0.3},
    "softmax-t04": {**PAIR, "temperature": 0.4},
    "epochs60": {**PAIR, "epochs": 60, "temperature": 0.1},
    "views2": {**PAIR, "scene_views": 2, "product_views": 2},   # twice the augmented views (a cache of its own)
    "hard": {**PAIR, "mining": "hard"},
    "per-half": {**PAIR, "per_half_loss": True},
    "dim64": {**PAIR, "dim": 64},          # the default is 128
    "dim256": {**PAIR, "dim": 256, "temperature": 0.1},
    "plain": {**PAIR, "backbone": "efficientnet-lite0"},   # the backbone before the multi-scale one
}
BASELINE = "default"   # every other variant's hybrid is compared with its, seed by seed, when both ran
# The settings that shape a feature cache (jobs.training.feature_cache fingerprints them): runs share one only
# when these agree.
CACHE_SETTINGS = ("backbone", "backbone_weights", "exclusion", "scene_views", "product_views")
METRICS = ("fitb_expected", "hr@10", "hr@50")
HEADLINE = ("hybrid", "paper", "global", "local", "backbone")
PAIRS = ("hybrid - global", "hybrid - local", "hybrid - paper")


def link_cache(source: Path, run: Path) -> None:
    """Give `run` the feature cache and split of `source` (same seed) as hard links: nothing is copied."""
    if (run / "cache").exists() or not (source / "cache").is_dir():
        return
    run.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "cache", run / "cache", copy_function=os.link)
    if (source / "split.json").is_file() and not (run / "split.json").exists():
        shutil.copy2(source / "split.json", run / "split.json")


def shared_cache(out: Path, cfg: TrainConfig, data_seed: int | None) -> Path | None:
    """An earlier run under `out` whose data and feature cache the run of `cfg` shares: with one data seed,
    any run of any variant made with it and the same CACHE_SETTINGS (its config says so); else a run of
    the same seed."""
    for config in sorted(out.glob("*/seed-*/config.json")):
        saved = json.loads(config.read_text())
        same = saved.get("seed") == cfg.seed if data_seed is None else \
            (saved.get("seed") if saved.get("data_seed") is None else saved.get("data_seed")) == data_seed
        same = same and all(saved.get(k, getattr(TrainConfig, k)) == getattr(cfg, k) for k in CACHE_SETTINGS)
        if same and (config.parent / "cache").is_dir():
            return config.parent
    return None


def run_one(data_dir: Path, run: Path, cfg: TrainConfig, *, progress: bool) -> dict:
    """Train (or resume) and evaluate one run on test and on validation (`val`: what a choice between variants
    may look at); the reports are read back when they are already there."""
    if not RunLayout(run).summary.is_file():
        train(data_dir, run, config=cfg, resume=True, progress=progress)
    reports = {}
    for split, name in (("test", "report.json"), ("val", "report-val.json")):
        reports[split] = json.loads((run / name).read_text()) if (run / name).is_file() else \
            run_evaluation(run, data_dir=data_dir, split=split, plots=False)
    return {**reports["test"], "val": reports["val"]}


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation, min and max of one figure over seeds."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "per_seed": [float(x) for x in v]}


def summarise_variant(reports: dict[int, dict]) -> dict:
    """Over the seeds of one variant: every method's figures (mean and spread), each seed's paired intervals,
    presence and the classifier."""
    seeds = sorted(reports)
    methods = {m: {k: spread([reports[s]["methods"][m][k] for s in seeds]) for k in METRICS}
               for m in HEADLINE if all(m in reports[s]["methods"] for s in seeds)}
    best_half = {k: spread([max(reports[s]["methods"]["global"][k], reports[s]["methods"]["local"][k])
                            for s in seeds]) for k in METRICS}
    comparisons = {pair: {s: reports[s]["comparisons"][pair] for s in seeds if pair in reports[s]["comparisons"]}
                   for pair in PAIRS}
    presence = {s: {"mean_ap": reports[s]["presence"].get("mean_ap"),
                    "mean_precision": reports[s]["presence"].get("mean_precision"),
                    "mean_recall": reports[s]["presence"].get("mean_recall")}
                for s in seeds if reports[s].get("presence", {}).get("available")}
    # distance_roc_auc: the raw distance's, in reports whose calibration is cohort-normalised (all seeds or none)
    classifier = {k: spread([reports[s]["classifier"]["hybrid"][k] for s in seeds])
                  for k in ("roc_auc", "ece", "distance_roc_auc")
                  if all(k in reports[s]["classifier"]["hybrid"] for s in seeds)}
    weights = {s: reports[s].get("hybrid", {}).get("local_weights") for s in seeds}
    val = {m: {k: spread([reports[s]["val"]["methods"][m][k] for s in seeds]) for k in METRICS}
           for m in HEADLINE if all(m in reports[s].get("val", {}).get("methods", {}) for s in seeds)}
    return {"seeds": seeds, "n_queries": reports[seeds[0]]["n_queries"], "methods": methods, "val_methods": val,
            "best_half": best_half, "comparisons": comparisons, "presence": presence,
            "classifier_hybrid": classifier, "local_weights": weights}


def against_baseline(reports: dict[int, dict], baseline: dict[int, dict], split: str) -> dict:
    """Per seed, a variant's hybrid minus the baseline variant's on the same `split` queries (compare_runs); a seed
    is left out when either run is missing, its report predates per-query records, or the two runs were scored
    on different queries (another data seed)."""
    out = {}
    for seed in sorted(set(reports) & set(baseline)):
        a, b = (r if split == "test" else r.get("val", {}) for r in (reports[seed], baseline[seed]))
        if "per_query" in a and "per_query" in b and a["per_query"]["keys"] == b["per_query"]["keys"]:
            out[seed] = compare_runs(a["per_query"], b["per_query"])
    return out


def format_quality(summary: dict) -> str:
    """The markdown tables of a quality summary: per variant, methods (mean ± std over seeds) and intervals."""
    lines = []
    for name, v in summary["variants"].items():
        lines += [f"### {name} (seeds {', '.join(map(str, v['seeds']))}; {v['n_queries']} test queries)", "",
                  "| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for method, figures in v["methods"].items():
            cells = [f"{figures[k]['mean']:.3f} ± {figures[k]['std']:.3f}" for k in METRICS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if v.get("val_methods"):
            lines += ["", "validation split (what a choice between variants may use):", "",
                      "| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
            for method, figures in v["val_methods"].items():
                cells = [f"{figures[k]['mean']:.3f} ± {figures[k]['std']:.3f}" for k in METRICS]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "| paired difference | seed | fitb_expected [95% CI] | hr@10 [95% CI] |", "|---|---|---|---|"]
        for pair, per_seed in v["comparisons"].items():
            for seed, figures in per_seed.items():
                cells = [f"{figures[k]['diff']:+.3f} [{figures[k]['ci95'][0]:+.3f}, {figures[k]['ci95'][1]:+.3f}]"
                         for k in ("fitb_expected", "hr@10")]
                lines.append(f"| {pair} | {seed} | " + " | ".join(cells) + " |")
        for split, per_seed in v.get("vs_baseline", {}).items():
            if per_seed:
                title = f"hybrid minus {BASELINE}'s hybrid, {split} split (the same queries; paired bootstrap):"
                lines += ["", title, "",
                          "| seed | fitb_expected [95% CI] | hr@10 [95% CI] | hr@50 [95% CI] |", "|---|---|---|---|"]
                for seed, figures in per_seed.items():
                    cells = [f"{figures[k]['diff']:+.3f} [{figures[k]['ci95'][0]:+.3f}, {figures[k]['ci95'][1]:+.3f}]"
                             for k in ("fitb_expected", "hr@10", "hr@50")]
                    lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        c = v["classifier_hybrid"]
        d = c.get("distance_roc_auc")
        raw = "" if d is None else f" (cohort-normalised; the raw distance {d['mean']:.3f} ± {d['std']:.3f})"
        lines += ["", f"classifier (hybrid): ROC-AUC {c['roc_auc']['mean']:.3f} ± {c['roc_auc']['std']:.3f}{raw}, "
                      f"ECE {c['ece']['mean']:.3f} ± {c['ece']['std']:.3f}", ""]
    return "\n".join(lines)


def run_quality(data_dir: Path, out: Path, *, seeds: list[int], variants: list[str], epochs: int | None = None,
                data_seed: int | None = 0, progress: bool = True) -> dict:
    """Train and evaluate every (variant, seed); write quality.json and quality.md under `out`; return the summary."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if not Path(data_dir).is_dir():
        raise InputError(f"{data_dir}: no such dataset folder (ctl sample-data writes data/sample)")
    started, summary = time.time(), {"data": str(data_dir), "data_seed": data_seed, "variants": {}}
    all_reports: dict[str, dict[int, dict]] = {}
    for name in variants:
        reports = {}
        for seed in seeds:
            run = out / name / f"seed-{seed}"
            cfg = TrainConfig(seed=seed, data_seed=data_seed, **VARIANTS[name])
            cfg = cfg if epochs is None else cfg.replace(epochs=epochs)
            source = shared_cache(out, cfg, data_seed)
            if source is not None:
                link_cache(source, run)
            click.echo(f"[{time.time() - started:7.0f} s] {name} seed {seed} -> {run}", err=True)
            reports[seed] = run_one(Path(data_dir), run, cfg, progress=progress)
        summary["variants"][name] = {"settings": VARIANTS[name], **summarise_variant(reports)}
        all_reports[name] = reports
        # Paired against the baseline on the same queries, whichever order the variants ran in.
        if data_seed is not None and BASELINE in all_reports:
            for other, other_reports in all_reports.items():
                if other != BASELINE:
                    summary["variants"][other]["vs_baseline"] = {
                        split: against_baseline(other_reports, all_reports[BASELINE], split)
                        for split in ("val", "test")}
        write_json_atomic(out / "quality.json", summary)      # after each variant: a partial table is kept
    summary["seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / "quality.json", summary)
    write_text_atomic(out / "quality.md", format_quality(summary) + "\n")
    return summary


@click.command("quality")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data/sample"),
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/quality"),
              show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True, help="training seeds, comma-separated")
@click.option("--variants", default="default", show_default=True,
              help=f"comma-separated, from: {', '.join(VARIANTS)}")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="override every variant's epochs")
@click.option("--data-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="one split, one set of views and queries for every run (one feature cache)")
@click.option("--vary-data", is_flag=True, help="each training seed with its own split, views and queries instead")
def quality_command(data_dir, out, seeds, variants, epochs, data_seed, vary_data):
    """The headline table over several training seeds (resumable): every method, mean and spread, paired CIs."""
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"seeds must be integers separated by commas, got {seeds!r}") from None
    summary = run_quality(data_dir, out, seeds=seed_list, variants=[v.strip() for v in variants.split(",")],
                          epochs=epochs, data_seed=None if vary_data else data_seed)
    click.echo(format_quality(summary))
    click.echo(f"wrote {out / 'quality.json'} and {out / 'quality.md'}")
