"""The classifier's calibration: each distance turned into a probability of "completes the look".

Fitted on the validation split's pairs against same-category negatives, written as the run's
calibration.json.

Samples (pipeline.evaluation.classifier_samples): each validation pair's positive against its
same-category products not in the scene, the negatives of one pair weighing one positive in all (even
odds). Platt scaling (pipeline.calibration.fit_platt); the threshold is the probability with the best
F1 on those same samples.
"""
from __future__ import annotations

from pathlib import Path

from jobs.training.config import TrainConfig
from jobs.training.strategy import StepStrategy
from jobs.training.training_data import Readable, TrainingData, usable_queries
from pipeline.calibration import (
    FILE,
    Calibrations,
    best_f1_threshold,
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
    distance_matrices,
)
from pipeline.metrics import roc_auc

METHODS = ("hybrid", "global", "local")
THRESHOLD_RULE = "the probability with the best F1 on the validation samples (even odds: each pair's positive " \
                 "against the mean of its same-category negatives)"


def fit_calibrations(queries: list[Query], emb: QueryEmbeddings, category_embedding: CategoryEmbedding, *,
                     checkpoint_sha256: str, split: str = "val",
                     local_weights: dict[str, float] | None = None) -> Calibrations:
    """Platt calibration and best-F1 threshold of the hybrid, global and local distances on `queries`."""
    if not queries:
        raise ValueError(f"no {split} queries to calibrate the classifier on")
    matrices = distance_matrices(emb, queries, category_embedding, METHODS, local_weights=local_weights)
    methods, figures = {}, {}
    for method in METHODS:
        d, y, w = classifier_samples(matrices[method], queries, emb)
        platt = fit_platt(d, y, w)
        p = platt.probability(d)
        platt = type(platt)(platt.a, platt.b, best_f1_threshold(p, y, w))
        methods[method] = platt
        figures[method] = {"roc_auc": roc_auc(y, -d, w), "ece": expected_calibration_error(p, y, w),
                           **weighted_counts(p, y, w, platt.threshold)}
    info = {"calibration": "platt: p = sigmoid(a * d + b), weighted maximum likelihood",
            "fitted_on": {"split": split, "queries": len(queries),
                          "samples": "each pair's positive (weight 1) and its same-category products not in the "
                                     "scene (weight 1 / their number)"},
            "threshold_rule": THRESHOLD_RULE, split: figures}
    return Calibrations(checkpoint_sha256, methods, info)


def write_calibrations(run_dir, calibrations: Calibrations) -> Path:
    return calibrations.save(Path(run_dir) / FILE)


def calibrate_run(run_dir, data: TrainingData, cfg: TrainConfig, strategy: StepStrategy, embedder: StyleEmbedder,
                  readable: Readable, *, checkpoint_sha256: str) -> Calibrations:
    """Fit the calibrations on the run's validation queries (those training validated on) and write them."""
    queries = usable_queries(data, data.val_pairs, cfg.split_seed, readable)[: cfg.val_queries]
    calibrations = fit_calibrations(queries, strategy.query_embeddings(embedder, queries), category_lookup(embedder),
                                    checkpoint_sha256=checkpoint_sha256, local_weights=embedder.local_weights_by_name())
    write_calibrations(run_dir, calibrations)
    return calibrations
