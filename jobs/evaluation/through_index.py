"""Evaluation through the index: each test pair's positive ranked among its whole category by the real Retriever.

Two-stage (FAISS top-C by the retriever's stage 1, hybrid query or d_g; exact d_h re-rank) and exhaustively
(C = the whole category).

The sampled protocol (pipeline.evaluation) ranks the positive among a few hundred drawn negatives and
never meets the index or the candidate cut; this is what a user of ``ctl-retrieve --category`` or of a
look gets. Per query: the pair's scene with its product left out, encoded once through
``Retriever.encode_scene``; the exhaustive ranking is ``retrieve(category=c)`` with C = every product
of the category. Reported: HR@{1,10,50} and MRR both ways (a positive outside the two-stage top-C is a
miss) with bootstrap intervals over queries; the two-stage figures at C, 2C and 4C with their paired
differences from exhaustive (and the smallest C within 0.005 of it on HR@10 and HR@50); the
candidate-cut curve: the mean overlap of the two-stage top-k with the exhaustive top-k for C in {k, 2k,
5k, 10k, 20k, 50k}, per category (as the look and --category search) and flat (the nearest products of
any category); and what a query naming no C gets (Retriever.candidate_count's default): its HR@10 / HR@50
against exhaustive (the top 50 at the default C for k = 50) and its top-k overlap, per category and flat.
"""
from __future__ import annotations

import time

import numpy as np

from common import defaults
from pipeline.evaluation import KS, Query
from pipeline.images import load_image
from pipeline.metrics import bootstrap_mean, paired_bootstrap
from pipeline.scene_crops import exclude_product
from retrieval.retriever import Retriever

CUT_FACTORS = (1, 2, 5, 10, 20, 50)
OVERLAP_TARGET = 0.99
SWEEP_FACTORS = (1, 2, 4)      # two-stage figures at C, 2C and 4C beside the exhaustive ones
AGREEMENT = 0.005              # the "two-stage within 0.005 of exhaustive", on HR@10 and HR@50
AGREEMENT_KS = (10, 50)


def ranking_figures(ranks, ks=KS) -> dict[str, float]:
    """HR@K and MRR of 0-based ranks; None (the positive was cut before the re-rank) is a miss."""
    r = np.array([np.inf if x is None else x for x in ranks], dtype=float)
    if r.size == 0:
        raise ValueError("no ranks to score")
    return {**{f"hr@{k}": float((r < k).mean()) for k in ks}, "mrr": float(np.mean(1.0 / (r + 1.0)))}


def hit_indicators(ranks, k: int) -> np.ndarray:
    """1.0 where the 0-based rank is below k, else 0.0 (None, cut before the re-rank, is a miss)."""
    return np.array([0.0 if r is None else float(r < k) for r in ranks])


def ranking_intervals(ranks, ks=KS) -> dict[str, list[float]]:
    """95% bootstrap intervals over queries of HR@K and MRR (ranking_figures' keys)."""
    reciprocal = np.array([0.0 if r is None else 1.0 / (r + 1.0) for r in ranks])
    return {**{f"hr@{k}": bootstrap_mean(hit_indicators(ranks, k))["ci95"] for k in ks},
            "mrr": bootstrap_mean(reciprocal)["ci95"]}


def sweep_row(candidates: int, two_stage, exhaustive) -> dict:
    """Two-stage at one C against exhaustive, on the same queries: figures, and the paired HR@K differences."""
    figures = ranking_figures(two_stage)
    differences = {f"hr@{k}": paired_bootstrap(hit_indicators(two_stage, k), hit_indicators(exhaustive, k))
                   for k in AGREEMENT_KS}
    within = all(abs(d["diff"]) <= AGREEMENT + 1e-12 for d in differences.values())
    return {"candidates": candidates, **figures, "minus_exhaustive": differences, "within_agreement": within,
            "cut_positives": int(sum(r is None for r in two_stage))}


def smallest_agreeing(sweep: list[dict]) -> int | None:
    """The smallest C of the sweep whose two-stage HR@10 and HR@50 are within AGREEMENT of exhaustive."""
    return next((row["candidates"] for row in sorted(sweep, key=lambda r: r["candidates"])
                 if row["within_agreement"]), None)


def _rank(hits, product_id: str) -> int | None:
    for i, h in enumerate(hits):
        if h.product_id == product_id:
            return i
    return None


def _overlap(a, b, k: int) -> float:
    top_a, top_b = {h.product_id for h in a.hits[:k]}, {h.product_id for h in b.hits[:k]}
    return len(top_a & top_b) / max(1, min(k, len(top_b)))


def smallest_cut(curve: list[dict], target: float = OVERLAP_TARGET) -> int | None:
    """The smallest C of a curve whose mean overlap reaches `target` (None if none does)."""
    return next((row["candidates"] for row in curve if row["overlap"] >= target), None)


def _curve(overlaps: dict[int, list[float]]) -> list[dict]:
    return [{"candidates": c, "overlap": float(np.mean(v)), "min": float(np.min(v)),
             "share_identical": float(np.mean(np.asarray(v) >= 1.0))} for c, v in sorted(overlaps.items())]


def through_index_report(dataset, queries: list[Query], *, checkpoint, index_dir, exclusion: str,
                         device="cpu", k: int = defaults.K, candidates: int = defaults.CANDIDATES,
                         cut_factors=CUT_FACTORS, retriever: Retriever | None = None,
                         stage1: str = defaults.STAGE1) -> dict:
    """`report.json`'s `through_index` section (see the module docstring). `retriever` overrides loading one
    (and its own stage 1 then counts, not `stage1`)."""
    started = time.perf_counter()
    retriever = retriever or Retriever.load(checkpoint=checkpoint, index_dir=index_dir, device=device, stage1=stage1)
    cuts = [f * k for f in cut_factors]
    known = set(retriever.categories)
    two_stage, exhaustive, skipped = [], [], {"category not in the index": 0, "positive not in the index": 0}
    keys: list[str] = []
    sweep_cs = sorted({f * candidates for f in SWEEP_FACTORS})
    swept: dict[int, list[int | None]] = {c: [] for c in sweep_cs}
    per_category: dict[int, list[float]] = {c: [] for c in cuts}
    flat: dict[int, list[float]] = {c: [] for c in cuts}
    top = max(AGREEMENT_KS)
    by_default: dict[str, list] = {"ranks": [], "per_category": [], "flat": []}
    default_counts: dict[str, set[int]] = {f"top {top}, per category": set(), f"top {k}, per category": set(),
                                           f"top {k}, flat": set()}
    for query in queries:
        if query.category not in known:
            skipped["category not in the index"] += 1
            continue
        pair = dataset.pairs[query.pair_index]
        scene = retriever.encode_scene(exclude_product(load_image(dataset.scenes[pair.scene_id]), pair.bbox, exclusion))
        n_c = len(retriever.index.rows_for_category(query.category))
        everything = retriever.retrieve(scene, k=n_c, candidates=n_c, category=query.category)
        rank = _rank(everything.hits, query.product_id)
        if rank is None:
            skipped["positive not in the index"] += 1
            continue
        exhaustive.append(rank)
        keys.append(f"{query.scene_id}/{query.product_id}")
        for c in sweep_cs:
            cut = retriever.retrieve(scene, k=c, candidates=c, category=query.category)
            swept[c].append(_rank(cut.hits, query.product_id))
        two_stage.append(swept[candidates][-1])
        best_flat = retriever.retrieve(scene, k=k, candidates=len(retriever))
        for c in cuts:
            per_category[c].append(_overlap(retriever.retrieve(scene, k=k, candidates=c, category=query.category),
                                            everything, k))
            flat[c].append(_overlap(retriever.retrieve(scene, k=k, candidates=c), best_flat, k))
        # a query that names no C: the top `top` for the HR figures, the top k for the overlaps
        default_top = retriever.retrieve(scene, k=top, category=query.category)
        by_default["ranks"].append(_rank(default_top.hits, query.product_id))
        default_k = retriever.retrieve(scene, k=k, category=query.category)
        by_default["per_category"].append(_overlap(default_k, everything, k))
        default_flat = retriever.retrieve(scene, k=k)
        by_default["flat"].append(_overlap(default_flat, best_flat, k))
        for label, result in zip(default_counts, (default_top, default_k, default_flat), strict=True):
            default_counts[label].add(result.candidates)
    if not exhaustive:
        raise ValueError(f"no query could be ranked through {index_dir} ({skipped})")
    curves = {"per_category": _curve(per_category), "flat": _curve(flat)}
    info = retriever.index.info
    return {
        "index_dir": str(index_dir), "index_version": retriever.index.version, "n_products": len(retriever),
        "factory": info.factory,
        "products_per_category": {c: int(len(retriever.index.rows_for_category(c))) for c in retriever.categories},
        "n_queries": len(exhaustive), "skipped": skipped, "candidates": candidates, "stage1": retriever.stage1,
        "two_stage": ranking_figures(two_stage), "exhaustive": ranking_figures(exhaustive),
        "intervals": {"two_stage": ranking_intervals(two_stage), "exhaustive": ranking_intervals(exhaustive)},
        "two_stage_cut_positives": int(sum(r is None for r in two_stage)),
        "candidate_sweep": [sweep_row(c, swept[c], exhaustive) for c in sweep_cs],
        "agreement": {"tolerance": AGREEMENT, "ks": list(AGREEMENT_KS),
                      "smallest_c": smallest_agreeing([sweep_row(c, swept[c], exhaustive) for c in sweep_cs])},
        "k": k, "candidate_cut": curves,
        "default_candidates": {
            "candidates": {label: sorted(counts) for label, counts in default_counts.items()},
            **{key: value for key, value in sweep_row(None, by_default["ranks"], exhaustive).items()
               if key != "candidates"},
            "overlap": {"per_category": float(np.mean(by_default["per_category"])),
                        "flat": float(np.mean(by_default["flat"]))}},
        "smallest_c": {"target_overlap": OVERLAP_TARGET, **{name: smallest_cut(c) for name, c in curves.items()}},
        "protocol": "each test pair's scene with its product left out; the positive ranked among every catalogue "
                    "product of its category by Retriever.retrieve(category=c): two-stage with C = `candidates` "
                    "pulled by `stage1` "
                    "(a positive outside the top C is a miss) and exhaustive (C = every product of the category); "
                    "candidate_cut: mean overlap of the two-stage top-k with the exhaustive top-k",
        "per_query": {"keys": keys, "exhaustive": exhaustive, "two_stage": two_stage,
                      "sweep": {str(c): swept[c] for c in sweep_cs}},
        "seconds": round(time.perf_counter() - started, 1),
    }


def compare_through_index(a: dict, b: dict, *, seed: int = defaults.SEED) -> dict:
    """Run a minus run b through the index, on the same queries (two `through_index` sections with per_query):
    HR@10 and HR@50, exhaustive, two-stage (each at its own C) and two-stage at every C both swept, with 95%
    paired bootstrap intervals. Refused unless both ranked the same queries in the same order."""
    if "per_query" not in a or "per_query" not in b:
        raise ValueError("a through_index section without per-query ranks (evaluated before they were kept)")
    if a["per_query"]["keys"] != b["per_query"]["keys"]:
        raise ValueError("the two runs were not ranked through the index on the same queries")
    out = {"candidates": [a["candidates"], b["candidates"]], "n_queries": len(a["per_query"]["keys"])}
    def paired(ranks_a, ranks_b) -> dict:
        return {f"hr@{k}": paired_bootstrap(hit_indicators(ranks_a, k), hit_indicators(ranks_b, k), seed=seed)
                for k in AGREEMENT_KS}

    for how in ("exhaustive", "two_stage"):
        out[how] = paired(a["per_query"][how], b["per_query"][how])
    sweep_a, sweep_b = a["per_query"].get("sweep", {}), b["per_query"].get("sweep", {})
    out["sweep"] = {c: paired(sweep_a[c], sweep_b[c]) for c in sorted(set(sweep_a) & set(sweep_b), key=int)}
    return out
