"""The classifier's calibration: each distance turned into a probability of "completes the look".

Fitted on the validation split's pairs against same-category negatives, written as the run's
calibration.json.

Samples (pipeline.evaluation.classifier_samples): each validation pair's positive against its
same-category products not in the scene, the negatives of one pair weighing one positive in all (even
odds). Each distance is first cohort-normalised: less the mean of the same scene's distances to a fixed
cohort of COHORT_SIZE products of that category, over their spread (drawn, seeded, from the products
of no validation or test scene; their ids and embeddings are written into calibration.json). Then Platt
scaling (pipeline.calibration.fit_platt); the threshold is the probability with the best F1 on those
same samples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jobs.training.config import TrainConfig
from jobs.training.strategy import StepStrategy
from jobs.training.training_data import Readable, TrainingData, usable_queries
from pipeline.calibration import (
    COHORT_SIZE,
    FILE,
    MIN_COHORT_SIZE,
    Calibrations,
    Cohort,
    best_f1_threshold,
    draw_cohort,
    expected_calibration_error,
    fit_platt,
    weighted_counts,
)
from pipeline.embedder import StyleEmbedder
from pipeline.evaluation import (
    CategoryEmbedding,
    Query,
    QueryEmbeddings,
    category_lookup,
    classifier_samples,
    cohort_distances,
    distance_matrices,
)
from pipeline.metrics import roc_auc

METHODS = ("hybrid", "global", "local")
THRESHOLD_RULE = "the probability with the best F1 on the validation samples (even odds: each pair's positive " \
                 "against the mean of its same-category negatives)"


def cohort_from(emb: QueryEmbeddings, product_category: dict[str, str], held_out: set[str], *,
                size: int = COHORT_SIZE, seed: int = 0, min_size: int = MIN_COHORT_SIZE) -> tuple[Cohort | None, str]:
    """The cohort: per category, up to `size` of the products `emb` holds that are in no held-out scene (their
    embeddings as emb computed them) -> (it, why). None when a category has fewer than `min_size` of them
    (then every distance is calibrated raw: one Platt cannot mix normalised and raw distances)."""
    by_category: dict[str, list[str]] = {}
    for pid in emb.product_index:
        if pid not in held_out and pid in product_category:
            by_category.setdefault(product_category[pid], []).append(pid)
    small = sorted(c for c, ids in by_category.items() if len(ids) < min_size)
    if small or not by_category:
        return None, (f"no cohort: categories {small} have fewer than {min_size} products outside the validation "
                      "and test scenes; raw distances calibrated")
    ids = draw_cohort(by_category, size=size, seed=seed)
    vectors = {c: emb.product_emb[[emb.product_index[p] for p in members]].float().numpy().astype(np.float32)
               for c, members in ids.items()}
    return Cohort(ids, vectors), f"cohort of up to {size} products per category, seed {seed}"


def fit_calibrations(queries: list[Query], emb: QueryEmbeddings, category_embedding: CategoryEmbedding, *,
                     checkpoint_sha256: str, split: str = "val", local_weights: dict[str, float] | None = None,
                     cohort: Cohort | None = None) -> Calibrations:
    """Platt calibration and best-F1 threshold of the hybrid, global and local distances on `queries`,
    cohort-normalised when a `cohort` is given."""
    if not queries:
        raise ValueError(f"no {split} queries to calibrate the classifier on")
    matrices = distance_matrices(emb, queries, category_embedding, METHODS, local_weights=local_weights)
    normalisers = dict.fromkeys(METHODS) if cohort is None else cohort_distances(
        emb, queries, category_embedding, {c: torch.from_numpy(v) for c, v in cohort.vectors.items()}, METHODS,
        local_weights=local_weights)
    methods, figures = {}, {}
    for method in METHODS:
        d, y, w = classifier_samples(matrices[method], queries, emb, normalisers[method])
        platt = fit_platt(d, y, w)
        p = platt.probability(d)
        platt = type(platt)(platt.a, platt.b, best_f1_threshold(p, y, w))
        methods[method] = platt
        figures[method] = {"roc_auc": roc_auc(y, -d, w), "ece": expected_calibration_error(p, y, w),
                           **weighted_counts(p, y, w, platt.threshold)}
    how = "platt: p = sigmoid(a * d + b), weighted maximum likelihood"
    if cohort is not None:
        largest = max(map(len, cohort.product_ids.values()))
        how += (f"; d cohort-normalised: (d - mean) / std of the scene's distances to up to {largest} products of "
                "the category (the cohort in this file)")
    info = {"calibration": how,
            "fitted_on": {"split": split, "queries": len(queries),
                          "samples": "each pair's positive (weight 1) and its same-category products not in the "
                                     "scene (weight 1 / their number)"},
            "threshold_rule": THRESHOLD_RULE, split: figures}
    return Calibrations(checkpoint_sha256, methods, info, cohort)


def write_calibrations(run_dir, calibrations: Calibrations) -> Path:
    return calibrations.save(Path(run_dir) / FILE)


def calibrate_run(run_dir, data: TrainingData, cfg: TrainConfig, strategy: StepStrategy, embedder: StyleEmbedder,
                  readable: Readable, *, checkpoint_sha256: str) -> Calibrations:
    """Fit the calibrations on the run's validation queries (those training validated on) and write them."""
    queries = usable_queries(data, data.val_pairs, cfg.split_seed, readable)[: cfg.val_queries]
    emb = strategy.query_embeddings(embedder, queries)
    pairs = data.dataset.pairs
    held_out = {pairs[j].product_id for j in (*data.val_pairs, *data.test_pairs)}
    category = {pid: product.category for pid, product in data.dataset.products.items()}
    cohort, why = cohort_from(emb, category, held_out, seed=cfg.split_seed)
    calibrations = fit_calibrations(queries, emb, category_lookup(embedder), checkpoint_sha256=checkpoint_sha256,
                                    local_weights=embedder.local_weights_by_name(), cohort=cohort)
    calibrations.info["cohort_rule"] = why
    write_calibrations(run_dir, calibrations)
    return calibrations
