"""Evaluation maths of the paper's task: seeded queries, distance matrices, FITB / HR@K and paired comparisons.

Pure functions of embeddings: no files, no jobs. The dataset is duck-typed (`pairs`, `products`),
and embeddings arrive as a :class:`QueryEmbeddings`, however they were computed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from common import defaults
from common.seeds import seed_from_key
from pipeline.distances import all_distances
from pipeline.metrics import expected_fitb, fitb_correct, hit_rates, paired_bootstrap, positive_rank
from pipeline.negatives import negative_pools

METHODS = ("hybrid", "global", "local", "backbone")
FITB_NEGATIVES = 3
RANK_NEGATIVES = 999
KS = (1, 10, 50)
COMPARISONS = (("hybrid", "backbone"), ("hybrid", "global"), ("hybrid", "local"))

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
                      methods=METHODS, chunk: int = 32) -> dict[str, np.ndarray]:
    """Distances of each query to its candidates under each method -> {method: Q x P}, lower = closer.

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
            for start in range(0, len(members), chunk):
                rows = members[start:start + chunk]
                b = len(rows)
                f_p = f_p_all.unsqueeze(0).expand(b, -1, -1)
                e_c = e_c_one.reshape(1, 1, -1).expand(b, len(cols), -1)
                d = all_distances(emb.scene_global[rows], emb.scene_regions[rows], f_p, e_c)
                for m in learned:
                    out[m][np.ix_(rows, cols)] = d[m].numpy()
    return out


def candidate_columns(emb: QueryEmbeddings, query: Query) -> list[int]:
    """Columns of a query's HR@K candidates in the distance matrices: the positive first, then its negatives."""
    return [emb.product_index[p] for p in (query.product_id, *query.rank_negatives)]


def per_query_scores(queries: list[Query], emb: QueryEmbeddings, category_embedding: CategoryEmbedding,
                     methods=METHODS, matrices: dict[str, np.ndarray] | None = None
                     ) -> dict[str, dict[str, np.ndarray]]:
    """Per method, one value per query: FITB hit (sampled negatives), expected FITB and the positive's rank.

    `matrices`: the queries' distance matrices when the caller has them already (distance_matrices).
    """
    if matrices is None:
        matrices = distance_matrices(emb, queries, category_embedding, methods)
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


def classifier_samples(dist: np.ndarray, queries: list[Query], emb: QueryEmbeddings
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The binary question "does this product complete the scene?" on each query's HR@K candidates.

    Returns (distance, label, weight) over every query's positive (label 1, weight 1) and its
    same-category negatives not in the scene (label 0, weight 1 / their number): each query weighs one
    positive against one negative in all, so the classes are at even odds whatever the category sizes.
    """
    d, y, w = [], [], []
    for qi, query in enumerate(queries):
        cols = candidate_columns(emb, query)
        n_neg = len(cols) - 1
        d.append(dist[qi, cols])
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
                  methods=METHODS) -> dict:
    """FITB, expected FITB and HR@K per method. `category_embedding(name)` -> d tensor."""
    return {m: summarise(s) for m, s in per_query_scores(queries, emb, category_embedding, methods).items()}


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
