"""Evaluation maths of the paper's task: seeded queries, distance matrices, FITB / HR@K and paired comparisons.

Pure functions of embeddings: no files, no jobs. The dataset is duck-typed (`pairs`, `products`),
and embeddings arrive as a :class:`QueryEmbeddings`, however they were computed.
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from common import defaults
from common.seeds import seed_from_key
from pipeline.calibration import cohort_normalise
from pipeline.distances import PAPER_LOCAL_WEIGHT, all_distances
from pipeline.metrics import expected_fitb, fitb_correct, hit_rates, paired_bootstrap, positive_rank
from pipeline.negatives import negative_pools

METHODS = ("hybrid", "paper", "global", "local", "backbone")
FITB_NEGATIVES = 3
RANK_NEGATIVES = 999
KS = (1, 10, 50)
COMPARISONS = (("hybrid", "backbone"), ("hybrid", "global"), ("hybrid", "local"), ("hybrid", "paper"),
               ("paper", "global"), ("paper", "local"))
# Fitting the hybrid's local weight on validation: a grid over [0, 1]; the paper's 1/2 is kept unless another
# weight beats it by more than WEIGHT_TOLERANCE in mean per-query (expected FITB + hit@10), and a category
# gets a weight of its own only with at least MIN_CATEGORY_QUERIES validation queries (else the global fit).
WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(21))
WEIGHT_TOLERANCE = 0.05
MIN_CATEGORY_QUERIES = 15
# The out-of-fold check of those weights (a diagnostic, docs/quality.md fourteenth round): 5 folds by scene, 5 repeats.
OUT_OF_FOLD_FOLDS = 5
OUT_OF_FOLD_REPEATS = 5

CategoryEmbedding = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class Query:
    """One test pair: the scene view (pair index) and its positive, with seeded same-category negatives."""

    pair_index: int
    scene_id: str
    product_id: str
    category: str
    fitb_negatives: tuple[str, ...]
    rank_negatives: tuple[str, ...]


def query_seed(seed: int, scene_id: str, product_id: str) -> int:
    """The seed of one query's negatives (the key format is part of the protocol: it fixes every figure)."""
    return seed_from_key(json.dumps([seed, scene_id, product_id]), bits=64)


def build_queries(dataset, pair_indices, *, seed: int, fitb_negatives: int = FITB_NEGATIVES,
                  rank_negatives: int = RANK_NEGATIVES) -> list[Query]:
    """For each pair: negatives of the positive's category that are not in that scene, seeded per pair."""
    pair_indices = list(pair_indices)
    pools = negative_pools(dataset, pair_indices, dataset.products)
    queries = []
    for j in pair_indices:
        pair, pool = dataset.pairs[j], pools[j]
        if len(pool) < fitb_negatives:
            continue  # a category too small for the protocol: no fair question can be asked
        order = np.random.default_rng(query_seed(seed, pair.scene_id, pair.product_id)).permutation(len(pool))
        queries.append(Query(
            j, pair.scene_id, pair.product_id, dataset.products[pair.product_id].category,
            tuple(pool[i] for i in order[:fitb_negatives]),
            tuple(pool[i] for i in order[:rank_negatives]),
        ))
    return queries


@dataclass
class QueryEmbeddings:
    """What the methods need per query and per product, however it was computed (cache or images).

    Scene rows follow the list of queries they were computed for; products are found by product_index.
    """

    scene_global: torch.Tensor   # Q x d
    scene_regions: torch.Tensor  # Q x R x d
    scene_pooled: torch.Tensor   # Q x C backbone features (for the untrained baseline)
    product_index: dict[str, int]
    product_emb: torch.Tensor    # P x d
    product_pooled: torch.Tensor  # P x C


def category_lookup(embedder) -> CategoryEmbedding:
    """name -> the unit category embedding e_c (on the CPU, where the distance matrices are computed)."""
    def lookup(name: str) -> torch.Tensor:
        index = embedder.category_indices([name]).to(embedder.category.weight.device)
        return embedder.category_embeddings(index)[0].float().cpu()
    return lookup


def distance_matrices(emb: QueryEmbeddings, queries: list[Query], category_embedding: CategoryEmbedding,
                      methods=METHODS, chunk: int = 32, local_weights: dict[str, float] | None = None
                      ) -> dict[str, np.ndarray]:
    """Distances of each query to its candidates under each method -> {method: Q x P}, lower = closer.

    "hybrid" uses `local_weights` (category name -> w, the checkpoint's; None or a missing category: the
    paper's 1/2), "paper" always w = 1/2.

    Learned methods go through `pipeline.distances.all_distances`, queries grouped by category so each
    group is scored only against the union of its candidates; their entries for any other product are
    NaN. The backbone method scores every product.
    """
    n_queries, n_products = len(queries), emb.product_emb.shape[0]
    if emb.scene_global.shape[0] != n_queries:
        raise ValueError(f"emb holds {emb.scene_global.shape[0]} scenes for {n_queries} queries: "
                         "its rows must follow the queries")
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
            w = (local_weights or {}).get(category, PAPER_LOCAL_WEIGHT)
            for start in range(0, len(members), chunk):
                rows = members[start:start + chunk]
                b = len(rows)
                f_p = f_p_all.unsqueeze(0).expand(b, -1, -1)
                e_c = e_c_one.reshape(1, 1, -1).expand(b, len(cols), -1)
                d = all_distances(emb.scene_global[rows], emb.scene_regions[rows], f_p, e_c, local_weight=w)
                for m in learned:
                    out[m][np.ix_(rows, cols)] = d[m].numpy()
    return out


def candidate_columns(emb: QueryEmbeddings, query: Query) -> list[int]:
    """Columns of a query's HR@K candidates in the distance matrices: the positive first, then its negatives."""
    return [emb.product_index[p] for p in (query.product_id, *query.rank_negatives)]


def per_query_scores(queries: list[Query], emb: QueryEmbeddings, category_embedding: CategoryEmbedding,
                     methods=METHODS, matrices: dict[str, np.ndarray] | None = None,
                     local_weights: dict[str, float] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per method, one value per query: FITB hit (sampled negatives), expected FITB and the positive's rank.

    `matrices`: the queries' distance matrices when the caller has them already (distance_matrices).
    """
    if matrices is None:
        matrices = distance_matrices(emb, queries, category_embedding, methods, local_weights=local_weights)
    out = {}
    for method, dist in matrices.items():
        fitb, fitb_expected, ranks = [], [], []
        for qi, query in enumerate(queries):
            fitb_cols = [emb.product_index[p] for p in (query.product_id, *query.fitb_negatives)]
            rank_cols = candidate_columns(emb, query)
            fitb.append(fitb_correct(dist[qi, fitb_cols]))
            fitb_expected.append(expected_fitb(dist[qi, rank_cols], FITB_NEGATIVES))
            ranks.append(positive_rank(dist[qi, rank_cols]))
        out[method] = {"fitb": np.array(fitb, float), "fitb_expected": np.array(fitb_expected), "rank": np.array(ranks)}
    return out


def cohort_distances(emb: QueryEmbeddings, queries: list[Query], category_embedding: CategoryEmbedding,
                     cohort_vectors: dict[str, torch.Tensor], methods=("hybrid", "global", "local"),
                     local_weights: dict[str, float] | None = None) -> dict[str, list[np.ndarray]]:
    """Each query scene's distances to its category's cohort (M_c x d vectors) -> {method: [M_c distances per
    query]}, by the one definition (pipeline.distances.all_distances), queries grouped by category."""
    missing = sorted({q.category for q in queries} - set(cohort_vectors))
    if missing:
        raise ValueError(f"no cohort for categories {missing}")
    out: dict[str, list] = {m: [None] * len(queries) for m in methods}
    groups: dict[str, list[int]] = {}
    for qi, q in enumerate(queries):
        groups.setdefault(q.category, []).append(qi)
    with torch.no_grad():
        for category, members in groups.items():
            cohort = cohort_vectors[category].float()
            f_p = cohort.unsqueeze(0).expand(len(members), -1, -1)
            e_c = category_embedding(category).reshape(1, 1, -1).expand(len(members), len(cohort), -1)
            d = all_distances(emb.scene_global[members].float(), emb.scene_regions[members].float(), f_p, e_c,
                              local_weight=(local_weights or {}).get(category, PAPER_LOCAL_WEIGHT))
            for m in methods:
                rows = d[m].double().numpy()
                for row, qi in enumerate(members):
                    out[m][qi] = rows[row]
    return out


def classifier_samples(dist: np.ndarray, queries: list[Query], emb: QueryEmbeddings,
                       cohort_d: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The binary question "does this product complete the scene?" on each query's HR@K candidates.

    Returns (distance, label, weight) over every query's positive (label 1, weight 1) and its
    same-category negatives not in the scene (label 0, weight 1 / their number): each query weighs one
    positive against one negative in all, so the classes are at even odds whatever the category sizes.
    With `cohort_d` (per query, its scene's distances to its category's cohort: cohort_distances) the distances are
    cohort-normalised (pipeline.calibration.cohort_normalise).
    """
    d, y, w = [], [], []
    for qi, query in enumerate(queries):
        cols = candidate_columns(emb, query)
        n_neg = len(cols) - 1
        d.append(dist[qi, cols] if cohort_d is None else cohort_normalise(dist[qi, cols], cohort_d[qi]))
        y.append(np.r_[1.0, np.zeros(n_neg)])
        w.append(np.r_[1.0, np.full(n_neg, 1.0 / max(n_neg, 1))])
    if not d:
        raise ValueError("no queries to make classifier samples from")
    return np.concatenate(d).astype(float), np.concatenate(y), np.concatenate(w)


def summarise(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean FITB, mean expected FITB and HR@K of one method's per-query scores."""
    return {"fitb": float(scores["fitb"].mean()), "fitb_expected": float(scores["fitb_expected"].mean()),
            **hit_rates(scores["rank"], KS)}


def score_queries(queries: list[Query], emb: QueryEmbeddings, category_embedding: CategoryEmbedding,
                  methods=METHODS, local_weights: dict[str, float] | None = None) -> dict:
    """FITB, expected FITB and HR@K per method. `category_embedding(name)` -> d tensor."""
    scores = per_query_scores(queries, emb, category_embedding, methods, local_weights=local_weights)
    return {m: summarise(s) for m, s in scores.items()}


def compare_methods(scores: dict[str, dict[str, np.ndarray]], seed: int = defaults.SEED) -> dict:
    """Paired differences on the same queries (expected FITB and HR@10), with 95% bootstrap intervals."""
    out = {}
    for a, b in COMPARISONS:
        if a in scores and b in scores:
            out[f"{a} - {b}"] = {
                "fitb_expected": paired_bootstrap(scores[a]["fitb_expected"], scores[b]["fitb_expected"], seed=seed),
                "hr@10": paired_bootstrap(scores[a]["rank"] < 10, scores[b]["rank"] < 10, seed=seed),
            }
    return out


def per_query_record(queries: list[Query], scores: dict[str, dict[str, np.ndarray]]) -> dict:
    """Every method's per-query expected FITB and rank, keyed by query (scene/product), for report.json: what
    a comparison between two runs on the same queries (compare_runs) pairs."""
    return {"keys": [f"{q.scene_id}/{q.product_id}" for q in queries],
            "methods": {m: {"fitb_expected": [round(float(x), 6) for x in s["fitb_expected"]],
                            "rank": [int(r) for r in s["rank"]]} for m, s in scores.items()}}


def compare_runs(a: dict, b: dict, *, method: str = "hybrid", seed: int = defaults.SEED) -> dict:
    """Run a's method minus run b's on the same queries (two per_query_records): expected FITB, HR@10 and
    HR@50 with 95% paired bootstrap intervals. Refused unless both records hold the same queries in order."""
    if a["keys"] != b["keys"]:
        raise ValueError("the two runs were not scored on the same queries (different keys or order)")
    ra, rb = (np.asarray(r["methods"][method]["rank"]) for r in (a, b))
    out = {"fitb_expected": paired_bootstrap(a["methods"][method]["fitb_expected"],
                                             b["methods"][method]["fitb_expected"], seed=seed)}
    for k in (10, 50):
        out[f"hr@{k}"] = paired_bootstrap(ra < k, rb < k, seed=seed)
    return out


def weight_grid_scores(d_global: np.ndarray, d_local: np.ndarray, queries: list[Query], emb: QueryEmbeddings,
                       grid=WEIGHT_GRID) -> np.ndarray:
    """Q x len(grid): each query's expected FITB + hit@10 under d_h = (1 - w) d_g + w d_l for each w of `grid`."""
    out = np.zeros((len(queries), len(grid)))
    for qi, query in enumerate(queries):
        cols = candidate_columns(emb, query)
        g, loc = d_global[qi, cols].astype(np.float64), d_local[qi, cols].astype(np.float64)
        for wi, w in enumerate(grid):
            d = (1.0 - w) * g + w * loc
            out[qi, wi] = expected_fitb(d, FITB_NEGATIVES) + float(positive_rank(d) < 10)
    return out


def _pick_weight(scores: np.ndarray, grid, tolerance: float) -> float:
    """The grid weight of the best mean score (the one nearest 1/2 among ties); 1/2 unless it wins by > tolerance."""
    means = scores.mean(axis=0)
    best = max(range(len(grid)), key=lambda i: (round(float(means[i]), 12), -abs(grid[i] - PAPER_LOCAL_WEIGHT)))
    paper = min(range(len(grid)), key=lambda i: abs(grid[i] - PAPER_LOCAL_WEIGHT))
    return float(grid[best]) if means[best] - means[paper] > tolerance else float(grid[paper])


def _weights_from_scores(scores: np.ndarray, categories: list[str], grid, tolerance: float, min_queries: int
                         ) -> tuple[dict[str, float], float, list[str]]:
    """(weight per category, the weight over all queries, the categories fitted on their own) from a score grid."""
    overall = _pick_weight(scores, grid, tolerance)
    rows: dict[str, list[int]] = {}
    for qi, category in enumerate(categories):
        rows.setdefault(category, []).append(qi)
    weights, own = {}, []
    for category, members in sorted(rows.items()):
        if len(members) >= min_queries:
            weights[category] = _pick_weight(scores[members], grid, tolerance)
            own.append(category)
        else:
            weights[category] = overall
    return weights, overall, own


def fold_of(group: str, repeat: int, folds: int) -> int:
    """The fold of a query's group (its scene: a scene's queries stay together) in repeat `repeat`: a hash, no
    random stream, so the same scenes fall in the same folds on every machine."""
    return zlib.crc32(f"{repeat}/{group}".encode()) % folds


def out_of_fold_scores(scores: np.ndarray, categories: list[str], groups: list[str], *, grid=WEIGHT_GRID,
                       tolerance: float = WEIGHT_TOLERANCE, min_queries: int = MIN_CATEGORY_QUERIES,
                       folds: int = OUT_OF_FOLD_FOLDS, repeats: int = OUT_OF_FOLD_REPEATS) -> dict:
    """How the per-category weights score on queries they were not fitted on, beside the paper's 1/2.

    `scores` is weight_grid_scores' Q x len(grid). In each of `repeats` repeats the queries are split into `folds`
    folds by their group (fold_of); each fold is scored under weights fitted on the other folds (the same rule as
    fit_local_weights: a category with fewer than `min_queries` there takes their overall weight). Returns the
    mean score per query of the fitted weights (mean over repeats, and its spread), of 1/2, their difference,
    and whether the fitted weights came out ahead. The fitted weights' own validation score is in-sample and
    always at or above 1/2's; this is the figure that can say they are not (docs/quality.md, fourteenth round).
    """
    paper = grid.index(min(grid, key=lambda w: abs(w - PAPER_LOCAL_WEIGHT)))
    per_repeat = []
    for repeat in range(repeats):
        fold = np.array([fold_of(g, repeat, folds) for g in groups])
        chosen = np.zeros(len(categories))
        for f in range(folds):
            held, fit_on = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
            if not len(held):
                continue
            if not len(fit_on):          # one fold holds every group: nothing to fit on, the paper's form
                chosen[held] = scores[held, paper]
                continue
            weights, overall, _ = _weights_from_scores(scores[fit_on], [categories[i] for i in fit_on], grid,
                                                       tolerance, min_queries)
            for i in held:
                chosen[i] = scores[i, grid.index(weights.get(categories[i], overall))]
        per_repeat.append(float(chosen.mean()))
    fitted, half = float(np.mean(per_repeat)), float(scores[:, paper].mean())
    return {"fitted": fitted, "fitted_spread": float(np.std(per_repeat)), "paper": half,
            "fitted_minus_paper": fitted - half, "fitted_ahead": fitted > half, "folds": folds, "repeats": repeats,
            "grouped_by": "scene"}


def fit_local_weights(d_global: np.ndarray, d_local: np.ndarray, queries: list[Query], emb: QueryEmbeddings, *,
                      grid=WEIGHT_GRID, tolerance: float = WEIGHT_TOLERANCE,
                      min_queries: int = MIN_CATEGORY_QUERIES) -> dict:
    """The hybrid's local weight per category, fitted on (validation) queries' global and local matrices.

    Returns {"weights": {category: w}, "global_weight": w over all queries, "per_category_fitted": [names],
    "n_queries": {category: n}, "out_of_fold": out_of_fold_scores(...)}; a category with fewer than
    `min_queries` queries takes the global weight. The out-of-fold figures are a diagnostic: they change no weight.
    """
    if not queries:
        raise ValueError("no queries to fit the hybrid weights on")
    scores = weight_grid_scores(d_global, d_local, queries, emb, grid)
    categories = [q.category for q in queries]
    weights, overall, own = _weights_from_scores(scores, categories, grid, tolerance, min_queries)
    return {"weights": weights, "global_weight": overall, "per_category_fitted": own,
            "n_queries": {c: categories.count(c) for c in sorted(set(categories))}, "grid": list(grid),
            "tolerance": tolerance, "min_category_queries": min_queries,
            "score": "mean per-query expected FITB + hit@10",
            "out_of_fold": out_of_fold_scores(scores, categories, [q.scene_id for q in queries], grid=grid,
                                              tolerance=tolerance, min_queries=min_queries)}
