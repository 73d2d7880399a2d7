"""Evaluation: FITB and HR@K of the hybrid, global, local and backbone methods on the same test queries."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch

from pipeline.distances import all_distances
from pipeline.metrics import fitb_correct, hit_rates, positive_rank

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


def method_distances(method: str, emb: QueryEmbeddings, q: int, candidates: list[str], category_emb: torch.Tensor):
    """Distances of `candidates` to query q under `method` (lower = more compatible)."""
    rows = torch.tensor([emb.product_index[p] for p in candidates])
    if method == "backbone":
        a = torch.nn.functional.normalize(emb.scene_pooled[q].float(), dim=-1)
        b = torch.nn.functional.normalize(emb.product_pooled[rows].float(), dim=-1)
        return (1.0 - b @ a).numpy()
    f_p = emb.product_emb[rows].unsqueeze(0)
    e_c = category_emb.expand(1, len(candidates), -1)
    d = all_distances(emb.scene_global[q:q + 1], emb.scene_regions[q:q + 1], f_p, e_c)
    return d[method][0].numpy()


def score_queries(queries: list[Query], emb: QueryEmbeddings, category_embedding, methods=METHODS) -> dict:
    """FITB and HR@K per method. `category_embedding(name)` -> d tensor."""
    results = {}
    with torch.no_grad():
        cat_emb = {c: category_embedding(c).reshape(1, 1, -1) for c in {q.category for q in queries}}
        for method in methods:
            fitb, ranks = [], []
            for qi, query in enumerate(queries):
                d_fitb = method_distances(method, emb, qi, [query.product_id, *query.fitb_negatives], cat_emb[query.category])
                fitb.append(fitb_correct(d_fitb))
                d_rank = method_distances(method, emb, qi, [query.product_id, *query.rank_negatives], cat_emb[query.category])
                ranks.append(positive_rank(d_rank))
            results[method] = {"fitb": float(np.mean(fitb)), **hit_rates(ranks, KS)}
    return results


def format_table(methods: dict) -> str:
    cols = ["fitb", *[f"hr@{k}" for k in KS]]
    lines = [f"{'method':<10}" + "".join(f"{c:>9}" for c in cols)]
    for name, m in methods.items():
        lines.append(f"{name:<10}" + "".join(f"{m[c]:>9.3f}" for c in cols))
    return "\n".join(lines)


def run_evaluation(run_dir, *, data_dir=None, split: str = "test", seed: int | None = None,
                   plots: bool = True, device: str = "auto") -> dict:
    """Score every method on the run's `split` and write report.json, report.png and attention.png."""
    from jobs.train import (TrainConfig, cache_features, category_lookup, embeddings_from_cache, prepare_data,
                            resolve_device, usable_queries)
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
        from jobs.finetune import embeddings_from_images
        full = load_checkpoint(run_dir / "checkpoint.pt", device=dev)
        emb = embeddings_from_images(full.embedder, data, queries, cfg, dev)
        embedder = full.embedder.cpu()
    else:
        embedder = ckpt.embedder
        emb = embeddings_from_cache(embedder, data, queries)
    methods = score_queries(queries, emb, category_lookup(embedder))
    report = {
        "methods": methods,
        "n_queries": len(queries),
        "protocol": {
            "split": split, "seed": seed, "fitb_negatives": FITB_NEGATIVES, "rank_negatives_max": RANK_NEGATIVES,
            "rank_negatives_mean": float(np.mean([len(q.rank_negatives) for q in queries])),
            "negatives": "same category as the positive, not in the scene", "scene_exclusion": cfg.exclusion,
            "ks": list(KS),
        },
        "checkpoint_sha256": ckpt.sha256,
        "data": str(data_dir),
        "backbone": cfg.backbone,
        "seconds": round(time.time() - started, 1),
    }
    from pipeline.files import write_json_atomic
    write_json_atomic(run_dir / "report.json", report)
    if plots:
        from jobs.report_plots import attention_figure, methods_bar_chart
        methods_bar_chart(report, run_dir / "report.png")
        attention_figure(data, queries, emb, embedder, run_dir / "attention.png", cfg.exclusion)
    return report


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
    click.echo(f"wrote {Path(run_dir) / 'report.json'}" + ("" if no_plots else ", report.png, attention.png"))
