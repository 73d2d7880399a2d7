"""Pictures of an evaluation: the methods side by side, and where each missing category looks in its scene."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.files import atomic_path  # noqa: E402
from common.naming import short_category  # noqa: E402
from pipeline.distances import attention_weights  # noqa: E402
from pipeline.evaluation import CategoryEmbedding, QueryEmbeddings, candidate_columns, distance_matrices  # noqa: E402
from pipeline.images import load_image  # noqa: E402
from pipeline.metrics import positive_rank  # noqa: E402
from pipeline.scene_crops import exclude_product  # noqa: E402
from retrieval.contact_sheet import attention_overlay  # noqa: E402


def save_figure(fig, out_png, *, dpi: int) -> None:
    """Write the figure as a PNG atomically (a reader never sees half a plot), then free it."""
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)


def methods_bar_chart(report: dict, out_png) -> None:
    """Each method's figures as grouped bars, FITB's chance level marked."""
    methods = report["methods"]
    metrics = list(next(iter(methods.values())).keys())
    x = np.arange(len(metrics))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, values) in enumerate(methods.items()):
        bars = ax.bar(x + i * width - 0.4 + width / 2, [values[m] for m in metrics], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(0.25, color="grey", lw=0.8, ls="--")
    ax.text(-0.45, 0.26, "FITB chance", fontsize=7, color="grey")
    ax.set_xticks(x, [{"fitb_expected": "FITB (expected)"}.get(m, m.upper()) for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    proto = report["protocol"]
    ax.set_title(f"{report['n_queries']} {proto['split']} queries, ~{proto['rank_negatives_mean']:.0f} "
                 f"same-category negatives for HR@K")
    ax.legend(ncol=len(methods), fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, out_png, dpi=110)


def spread_of_ranks(ranks, n: int) -> list[int]:
    """Indices of `n` queries from the best-ranked to the worst, evenly spaced in rank order."""
    order = np.argsort(np.asarray(ranks), kind="stable")
    return [int(order[i]) for i in np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int))]


def attention_figure(dataset, queries, emb: QueryEmbeddings, category_embedding: CategoryEmbedding, out_png,
                     exclusion: str, n_scenes: int = 4, top: int = 5,
                     local_weights: dict[str, float] | None = None) -> list[tuple[int, int]]:
    """Per scene: the view the model saw with its category's attention, the positive, the top-ranked products.

    The scenes are picked from the best-ranked positive to the worst, so the picture shows both what
    works and what does not. Returns the (query index, 0-based rank of the positive) of each row.
    """
    # Every query is scored (rows of `emb` follow `queries`), then the figure's rows are chosen by rank.
    hybrid = distance_matrices(emb, queries, category_embedding, methods=("hybrid",),
                               local_weights=local_weights)["hybrid"]
    ranks = [positive_rank(hybrid[qi, candidate_columns(emb, q)]) for qi, q in enumerate(queries)]
    picked = spread_of_ranks(ranks, n_scenes)
    drawn = []
    fig, axes = plt.subplots(len(picked), top + 2, figsize=(2.0 * (top + 3), 2.4 * len(picked)), squeeze=False,
                             gridspec_kw={"width_ratios": [2] + [1] * (top + 1)})
    with torch.no_grad():
        for row, qi in zip(axes, picked, strict=False):
            query, dist = queries[qi], hybrid[qi]
            pair = dataset.pairs[query.pair_index]
            scene = exclude_product(load_image(dataset.scenes[pair.scene_id]), pair.bbox, exclusion)
            e_c = category_embedding(query.category).reshape(1, 1, -1)
            weights = attention_weights(emb.scene_regions[qi:qi + 1], e_c)[0, 0].numpy()
            side = int(round(len(weights) ** 0.5))
            row[0].imshow(attention_overlay(scene, weights.reshape(side, side)))
            row[0].set_title(f"attention: {short_category(query.category)}", fontsize=8)
            row[0].axis("off")
            candidates = [query.product_id, *query.rank_negatives]
            d = dist[candidate_columns(emb, query)]
            order = np.argsort(d, kind="stable")
            rank = ranks[qi]
            drawn.append((qi, rank))
            row[1].imshow(load_image(dataset.products[query.product_id].image_path))
            row[1].set_title(f"missing item\nrank {rank + 1} of {len(candidates)}", fontsize=8)
            row[1].axis("off")
            for ax, idx in zip(row[2:], order[:top], strict=False):
                ax.imshow(load_image(dataset.products[candidates[idx]].image_path))
                hit = idx == 0
                ax.set_title(("✓ " if hit else "") + f"d_h={d[idx]:.2f}", fontsize=8, color="green" if hit else "black")
                ax.axis("off")
    fig.suptitle("Scene with the product left out, attention of its category, and the top hybrid-ranked products "
                 "(scenes from the best-ranked missing item to the worst)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=90)
    return drawn


def reliability_diagram(report: dict, out_png) -> None:
    """The classifier's reliability: per probability bin, the observed share of positives against the mean
    predicted probability, for each distance (the diagonal is perfect calibration), and how the samples
    spread over the bins."""
    classifier = report["classifier"]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.2, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    width = 0.1 / (len(classifier) + 1)
    for i, (name, m) in enumerate(classifier.items()):
        bins = [b for b in m["reliability"] if b["share"] > 0]
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o", ms=4,
                label=f"{name}: ECE {m['ece']:.3f}, AUC {m['roc_auc']:.3f}")
        hist.bar([b["lo"] + (i + 0.5) * width + width / 2 for b in m["reliability"]],
                 [b["share"] for b in m["reliability"]], width, label=name)
    ax.set_ylabel("observed share of positives")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7.5, loc="upper left")
    proto = report["protocol"]
    ax.set_title(f"Does the product complete the scene? {report['n_queries']} {proto['split']} pairs\n"
                 "positive vs same-category products not in the scene (even odds)", fontsize=9)
    normalised = "cohort-normalised" in str((report.get("classifier_protocol") or {}).get("calibration"))
    hist.set_xlabel("calibrated probability (Platt" + (" on cohort-normalised d" if normalised else "")
                    + ", fitted on val.)", fontsize=9)
    hist.set_ylabel("share")
    fig.tight_layout()
    save_figure(fig, out_png, dpi=110)
