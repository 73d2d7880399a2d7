"""Evaluation: FITB and HR@K of the hybrid, global, local and backbone methods on the same test queries."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

from pipeline.distances import all_distances
from pipeline.metrics import expected_fitb, fitb_correct, hit_rates, paired_bootstrap, positive_rank

METHODS = ("hybrid", "global", "local", "backbone")
FITB_NEGATIVES = 3
RANK_NEGATIVES = 999
KS = (1, 10, 50)


@dataclass(frozen=True)
class Query:
    """One test pair: the scene view (pair index) and its positive, with seeded same-category negatives."""

    pair_index: int
    scene_id: str
    product_id: str
    category: str
    fitb_negatives: tuple[str, ...]
    rank_negatives: tuple[str, ...]


def _seed_for(seed: int, *parts) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()[:8], "little")


def build_queries(dataset, pair_indices, *, seed: int, fitb_negatives: int = FITB_NEGATIVES,
                  rank_negatives: int = RANK_NEGATIVES) -> list[Query]:
    """For each pair: negatives of the positive's category that are not in that scene, seeded per pair."""
    by_category: dict[str, list[str]] = {}
    for pid in sorted(dataset.products):
        by_category.setdefault(dataset.products[pid].category, []).append(pid)
    in_scene: dict[str, set[str]] = {}
    for pair in dataset.pairs:
        in_scene.setdefault(pair.scene_id, set()).add(pair.product_id)
    queries = []
    for j in pair_indices:
        pair = dataset.pairs[j]
        category = dataset.products[pair.product_id].category
        pool = [p for p in by_category[category] if p not in in_scene[pair.scene_id]]
        rng = np.random.default_rng(_seed_for(seed, pair.scene_id, pair.product_id))
        order = rng.permutation(len(pool))
        if len(pool) < fitb_negatives:
            continue  # a category too small for the protocol: no fair question can be asked
        queries.append(Query(
            j, pair.scene_id, pair.product_id, category,
            tuple(pool[i] for i in order[:fitb_negatives]),
            tuple(pool[i] for i in order[:rank_negatives]),
        ))
    return queries


@dataclass
class QueryEmbeddings:
    """What the methods need per query and per product, however it was computed (cache or images)."""

    scene_global: torch.Tensor   # Q x d
    scene_regions: torch.Tensor  # Q x R x d
    scene_pooled: torch.Tensor   # Q x C backbone features (for the untrained baseline)
    product_index: dict[str, int]
    product_emb: torch.Tensor    # P x d
    product_pooled: torch.Tensor  # P x C


def distance_matrices(emb: QueryEmbeddings, queries: list[Query], category_embedding, methods=METHODS,
                      chunk: int = 32) -> dict[str, np.ndarray]:
    """Distances of each query to its candidates under each method -> {method: Q x P}, lower = closer.

    Entries for products that are not among a query's candidates are NaN. Learned methods go through
    `pipeline.distances.all_distances`, queries grouped by category so each group is scored only
    against the union of its candidates.
    """
    n_queries, n_products = len(queries), emb.product_emb.shape[0]
    out = {m: np.full((n_queries, n_products), np.nan, np.float32) for m in methods}
    groups: dict[str, list[int]] = {}
    for qi, q in enumerate(queries):
        groups.setdefault(q.category, []).append(qi)
    with torch.no_grad():
        if "backbone" in methods:
            a = torch.nn.functional.normalize(emb.scene_pooled.float(), dim=-1)
            b = torch.nn.functional.normalize(emb.product_pooled.float(), dim=-1)
            out["backbone"][:] = (1.0 - a @ b.T).numpy()
        learned = [m for m in methods if m != "backbone"]
        for category, members in groups.items():
            if not learned:
                break
            cols = sorted({emb.product_index[p] for qi in members
                           for p in (queries[qi].product_id, *queries[qi].rank_negatives, *queries[qi].fitb_negatives)})
            f_p_all = emb.product_emb[cols]
            e_c_one = category_embedding(category)
            for start in range(0, len(members), chunk):
                rows = members[start:start + chunk]
                b = len(rows)
                f_p = f_p_all.unsqueeze(0).expand(b, -1, -1)
                e_c = e_c_one.reshape(1, 1, -1).expand(b, len(cols), -1)
                d = all_distances(emb.scene_global[rows], emb.scene_regions[rows], f_p, e_c)
                for m in learned:
                    out[m][np.ix_(rows, cols)] = d[m].numpy()
    return out


def per_query_scores(queries: list[Query], emb: QueryEmbeddings, category_embedding,
                     methods=METHODS) -> dict[str, dict[str, np.ndarray]]:
    """Per method, one value per query: FITB hit (sampled negatives), expected FITB and the positive's rank."""
    matrices = distance_matrices(emb, queries, category_embedding, methods)
    out = {}
    for method, dist in matrices.items():
        fitb, fitb_expected, ranks = [], [], []
        for qi, query in enumerate(queries):
            pos = emb.product_index[query.product_id]
            fitb_cols = [pos, *(emb.product_index[p] for p in query.fitb_negatives)]
            rank_cols = [pos, *(emb.product_index[p] for p in query.rank_negatives)]
            fitb.append(fitb_correct(dist[qi, fitb_cols]))
            fitb_expected.append(expected_fitb(dist[qi, rank_cols], FITB_NEGATIVES))
            ranks.append(positive_rank(dist[qi, rank_cols]))
        out[method] = {"fitb": np.array(fitb, float), "fitb_expected": np.array(fitb_expected), "rank": np.array(ranks)}
    return out


def summarise(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return {"fitb": float(scores["fitb"].mean()), "fitb_expected": float(scores["fitb_expected"].mean()),
            **hit_rates(scores["rank"], KS)}


def score_queries(queries: list[Query], emb: QueryEmbeddings, category_embedding, methods=METHODS) -> dict:
    """FITB, expected FITB and HR@K per method. `category_embedding(name)` -> d tensor."""
    return {m: summarise(s) for m, s in per_query_scores(queries, emb, category_embedding, methods).items()}


COMPARISONS = (("hybrid", "backbone"), ("hybrid", "global"), ("hybrid", "local"))


def compare_methods(scores: dict[str, dict[str, np.ndarray]], seed: int = 0) -> dict:
    """Paired differences on the same queries (expected FITB and HR@10), with 95% bootstrap intervals."""
    out = {}
    for a, b in COMPARISONS:
        if a in scores and b in scores:
            out[f"{a} - {b}"] = {
                "fitb_expected": paired_bootstrap(scores[a]["fitb_expected"], scores[b]["fitb_expected"], seed=seed),
                "hr@10": paired_bootstrap(scores[a]["rank"] < 10, scores[b]["rank"] < 10, seed=seed),
            }
    return out


def format_table(methods: dict) -> str:
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


def run_evaluation(run_dir, *, data_dir=None, split: str = "test", seed: int | None = None,
                   plots: bool = True, device: str = "auto") -> dict:
    """Score every method on the run's `split` and write report.json, report.png and attention.png.

    Another split than test writes report-SPLIT.json and its plots beside them, so a look at the
    validation split never replaces the test report.
    """
    from jobs.training.train import (
        TrainConfig,
        cache_features,
        category_lookup,
        embeddings_from_cache,
        prepare_data,
        resolve_device,
        usable_queries,
    )
    from pipeline.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    started = time.time()
    ckpt = load_checkpoint(run_dir / "checkpoint.pt", with_backbone=False)
    saved = dict(ckpt.config)
    data_dir = Path(data_dir or saved.pop("data", "data/sample"))
    saved.pop("data", None)
    cfg = TrainConfig(**saved)
    seed = cfg.seed if seed is None else seed
    dev = resolve_device(device)
    data = prepare_data(data_dir, run_dir, cfg)
    cache_features(data, run_dir, cfg, dev)
    pairs = {"test": data.test_pairs, "val": data.val_pairs, "train": data.train_pairs}[split]
    queries = usable_queries(data, pairs, seed)
    if not queries:
        raise click.ClickException(f"no usable {split} queries in {data_dir}")
    if cfg.mode == "finetune":
        from jobs.training.finetune import embeddings_from_images
        full = load_checkpoint(run_dir / "checkpoint.pt", device=dev)
        emb = embeddings_from_images(full.embedder, data, queries, cfg, dev)
        embedder = full.embedder.cpu()
    else:
        embedder = ckpt.embedder
        emb = embeddings_from_cache(embedder, data, queries)
    scores = per_query_scores(queries, emb, category_lookup(embedder))
    methods = {m: summarise(s) for m, s in scores.items()}
    report = {
        "methods": methods,
        "n_queries": len(queries),
        "comparisons": compare_methods(scores, seed),
        "protocol": {
            "split": split, "seed": seed, "fitb_negatives": FITB_NEGATIVES, "rank_negatives_max": RANK_NEGATIVES,
            "rank_negatives_mean": float(np.mean([len(q.rank_negatives) for q in queries])),
            "negatives": "same category as the positive, not in the scene", "scene_exclusion": cfg.exclusion,
            "ks": list(KS),
            "fitb_expected": "FITB averaged over every draw of 3 negatives from the HR@K candidates (no draw noise)",
            "comparisons": "paired per-query differences, 95% percentile bootstrap over queries (2000 resamples)",
        },
        "checkpoint_sha256": ckpt.sha256,
        "data": str(data_dir),
        "backbone": cfg.backbone,
        "seconds": round(time.time() - started, 1),
    }
    from common.files import write_json_atomic
    names = report_files(split)
    if plots:
        from jobs.evaluation.report_plots import attention_figure, methods_bar_chart
        methods_bar_chart(report, run_dir / names["chart"])
        attention_figure(data, queries, emb, embedder, run_dir / names["attention"], cfg.exclusion)
    # Last, so a report.json on disk means the whole evaluation (plots included) finished.
    write_json_atomic(run_dir / names["report"], report)
    return report


def report_files(split: str) -> dict[str, str]:
    """File names of a split's report and plots: the test split's are the plain names, others carry the split."""
    suffix = "" if split == "test" else f"-{split}"
    return {"report": f"report{suffix}.json", "chart": f"report{suffix}.png", "attention": f"attention{suffix}.png"}


@click.command("evaluate")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=Path("data/runs/sample"), show_default=True,
              help="training run folder (holds checkpoint.pt and split.json)")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="dataset folder (default: the one the run was trained on)")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--no-plots", is_flag=True, help="skip report.png and attention.png")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def evaluate_command(run_dir, data_dir, split, no_plots, device):
    """FITB and HR@K of hybrid, global, local and backbone distances; writes report.json and plots."""
    from pipeline.checkpoint import CheckpointError

    try:
        report = run_evaluation(run_dir, data_dir=data_dir, split=split, plots=not no_plots, device=device)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{report['n_queries']} {split} queries, about {report['protocol']['rank_negatives_mean']:.0f} "
               f"same-category negatives each for HR@K, {FITB_NEGATIVES} for FITB (chance 0.25)")
    click.echo(format_table(report["methods"]))
    click.echo("paired differences on the same queries, 95% bootstrap intervals:")
    click.echo(format_comparisons(report["comparisons"]))
    names = report_files(split)
    click.echo(f"wrote {Path(run_dir) / names['report']}" + ("" if no_plots else f", {names['chart']}, {names['attention']}"))
