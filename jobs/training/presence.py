"""The category-presence head: which categories a scene already shows, learned from the pairs.

Each scene's paired products give its categories (multi-label). The head sees the scene *unmasked*,
as a user's photo arrives, where the style heads see it with one product left out; so its features
are one pooled backbone vector per scene, not the masked scene views of the feature cache. In frozen
mode they are cached beside the masked views (``cache/scenes-unmasked``: one C-vector per scene, a few
hundred backbone forwards on the sample); after fine-tuning they come from the fine-tuned backbone.

It trains after the style heads are chosen, from zeros, full batch, with no random draw: it cannot
change what the style heads learned or the random stream they learned with. In frozen mode it also
learns from the feature cache's masked training views (the scene with one product left out, labelled
without that product's category): views where a category is *missing* from a look that otherwise
has it. Then each category gets its own threshold for precision of "present" >= PRESENT_PRECISION: a
category is left out of the look only when the model is that sure. The thresholds are fitted on
cross-fitted probabilities (each training scene's from a head that never saw it, FOLDS folds, beside the
validation scenes'), five times the scenes validation alone has, and ask for the precision's lower
confidence bound to reach 0.9, not its point estimate (docs/quality.md has the measurements).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.progress import progress_bar
from common.seeds import seed_from_key
from jobs.training.config import TrainConfig
from jobs.training.feature_cache import CacheItem, compute_features
from jobs.training.training_data import TrainingData
from pipeline.backbones import Backbone, build_backbone, pooled
from pipeline.calibration import precision_threshold
from pipeline.embedder import PresenceHead, StyleEmbedder
from pipeline.metrics import average_precision

STEPS = 300
LR = 1e-2
# Chosen on held-out AP (out-of-fold training scenes 0.893 / 0.896 / 0.908 and validation 0.942 / 0.948 / 0.947
# at 0.01 / 0.3 / 3): less saturated probabilities, whose thresholds carry over between heads.
WEIGHT_DECAY = 3.0
CACHE = "scenes-unmasked"
MAP_CACHE = "scenes-unmasked-maps"
# New heads pool a classifier over the map's regions (PresenceHead); measured on the sample, see docs/quality.md.
REGION_POOLING = True
PRESENT_PRECISION = 0.9   # precision of "present" each category's threshold is fitted for
MIN_PRESENT = 3           # ... saying "present" on at least this many scenes (not one lucky scene)
# The precision's Wilson lower bound at z must reach PRESENT_PRECISION: the smallest z whose thresholds reach a
# micro precision >= 0.9 under repeated 5-fold cross-validation on the pooled out-of-fold + validation
# probabilities (255 scenes, no test scene): z = 0 0.893 (recall 0.713), 0.25 0.899, 0.5 0.907 (0.667),
# 1.0 0.920 (0.575); docs/quality.md.
CONFIDENCE_Z = 0.5
FOLDS = 5                 # cross-fitting folds over the training scenes (their masked views follow them)


def scene_labels(dataset, scene_ids: list[str], categories: list[str]) -> np.ndarray:
    """S x K: 1 where the scene is paired with a product of category k."""
    row = {sid: i for i, sid in enumerate(scene_ids)}
    column = {c: k for k, c in enumerate(categories)}
    labels = np.zeros((len(scene_ids), len(categories)), dtype=np.float32)
    for pair in dataset.pairs:
        if pair.scene_id in row:
            labels[row[pair.scene_id], column[dataset.products[pair.product_id].category]] = 1.0
    return labels


def unmasked_items(dataset, scene_ids: list[str]) -> list[CacheItem]:
    return [CacheItem(sid, str(dataset.scenes[sid])) for sid in scene_ids]


def scene_features(data: TrainingData, out_dir, cfg: TrainConfig, device, *,
                   backbone: Backbone | None = None, maps: bool = False) -> tuple[list[str], np.ndarray]:
    """(scene ids whose image decodes, their unmasked features: S x C pooled, or S x C x h x w `maps`) for every
    scene of the split.

    `backbone` None: the frozen backbone of `cfg`, cached under out_dir/cache. A fine-tuned backbone is
    run without a cache (its weights are not part of the cache's fingerprint).
    """
    scene_ids = sorted({sid for part in ("train", "val", "test") for sid in data.split[part]})
    items = unmasked_items(data.dataset, scene_ids)
    how = {"keep_map": maps, "exclusion": cfg.exclusion, "workers": cfg.workers, "device": str(device),
           "desc": "unmasked scene features"}
    if backbone is None:
        table = compute_features(items, build_backbone(name=cfg.backbone, weights=cfg.backbone_weights),
                                 Path(out_dir) / "cache" / (MAP_CACHE if maps else CACHE), **how)
    else:
        with tempfile.TemporaryDirectory(prefix="presence-") as tmp:
            table = compute_features(items, backbone, tmp, **how)
    keep = np.asarray(table.valid, dtype=bool)
    return [sid for sid, ok in zip(scene_ids, keep, strict=True) if ok], table.features[keep].astype(np.float32)


def fit_presence(features: np.ndarray, labels: np.ndarray, *, steps: int = STEPS, lr: float = LR,
                 weight_decay: float = WEIGHT_DECAY) -> PresenceHead:
    """A presence head fitted by full-batch AdamW on binary cross-entropy (deterministic: zero start); on
    N x C pooled features an average-pooling head, on N x C x h x w maps a region-pooling one."""
    return fit_presence_heads(features, labels, [np.ones(len(features), dtype=bool)], steps=steps, lr=lr,
                              weight_decay=weight_decay)[0]


def fit_presence_heads(features: np.ndarray, labels: np.ndarray, subsets: list[np.ndarray], *, steps: int = STEPS,
                       lr: float = LR, weight_decay: float = WEIGHT_DECAY) -> list[PresenceHead]:
    """One presence head per subset of the rows (boolean masks), each as `fit_presence` on its rows alone: its own
    standardisation (the mean and spread of its rows), its own loss (the mean over its rows), its own AdamW steps
    (elementwise, so stacking the heads' parameters changes no update). Fitted together because each step of one
    head is two passes over every region of every row: one (N * R) x C by C x (heads * K) product instead of one
    per head (the main head and five cross-fitting folds on the sample's 1,050 rows of 49 regions x 1,432
    channels: `train_presence` 172 s -> 75 s on 2 cores, docs/quality.md).

    The regions are standardised once, with all rows' statistics; head h's own standardisation is the affine map
    x_h = x * (s / s_h) + (m - m_h) / s_h of those, folded into its weights at each step (exact in arithmetic)."""
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    masks = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in subsets]))      # H x N
    if masks.shape[1] != len(x) or not masks.any(1).all():
        raise ValueError("each subset must be a boolean mask over the rows with at least one row")
    regions = x.ndim == 4
    maps = x.flatten(2).transpose(1, 2) if regions else x[:, None, :]                   # N x R x C (a view)
    n, r, c = maps.shape
    k = y.shape[1]
    # Per head: the mean and spread of its rows' regions per channel, from per-row sums in float64.
    sums, squares = row_moments(maps)                                                     # N x C each
    weights = masks.double()
    counts = weights.sum(1, keepdim=True) * r                                             # H x 1
    means = weights @ sums / counts                                                       # H x C
    spreads = (weights @ squares / counts - means ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
    shared_mean = sums.sum(0) / (n * r)
    shared_spread = (squares.sum(0) / (n * r) - shared_mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
    # The standardisation is fixed: done once, not at every step (on the sample's 1,050 maps 5.4x faster).
    inputs = ((maps - shared_mean.float()) / shared_spread.float()).reshape(n * r, c).contiguous()
    scale = (shared_spread / spreads).float()                                             # H x C
    shift = ((shared_mean - means) / spreads).float()                                     # H x C
    heads = len(subsets)
    weight = torch.zeros(heads, k, c, requires_grad=True)
    bias = torch.zeros(heads, k, requires_grad=True)
    row_weight = (masks.float() / masks.sum(1, keepdim=True).float()).T[:, :, None] / k   # N x H x 1
    targets = y[:, None, :].expand(n, heads, k)
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in progress_bar(range(steps), desc=f"presence head{'s' if heads > 1 else ''} ({heads} fitted together)",
                              unit="step", leave=False):
            optimizer.zero_grad(set_to_none=True)
            # C x (H * K): autograd's gradient of inputs @ B is inputs.T @ grad, the fast form of this product.
            folded = (weight * scale[:, None, :]).reshape(heads * k, c).T
            offset = (bias + torch.einsum("hkc,hc->hk", weight, shift)).reshape(heads * k)
            logits = (inputs @ folded + offset).view(n, r, heads, k)
            pooled_logits = torch.logsumexp(logits, dim=1) - math.log(r) if regions else logits[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(pooled_logits, targets, reduction="none")
            (loss * row_weight).sum().backward()
            optimizer.step()
    out = []
    for h in range(heads):
        head = PresenceHead(c, k, regions=regions)
        with torch.no_grad():
            head.weight.copy_(weight[h])
            head.bias.copy_(bias[h])
            head.mean.copy_(means[h].float())
            head.scale.copy_(spreads[h].float())
        out.append(head.eval())
    return out


def row_moments(maps: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """N x R x C -> per row and channel, the sum over the regions and the sum of squares (float64; in chunks of
    rows, so no float64 copy of the whole maps)."""
    sums = torch.empty(maps.shape[0], maps.shape[2], dtype=torch.float64)
    squares = torch.empty_like(sums)
    for start in range(0, len(maps), chunk):
        block = maps[start:start + chunk].double()
        sums[start:start + chunk] = block.sum(1)
        squares[start:start + chunk] = (block * block).sum(1)
    return sums, squares


def probabilities(head: PresenceHead, features: np.ndarray) -> np.ndarray:
    """S x K presence probabilities of the head's features (pooled, or maps)."""
    x = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(head.weight.device)
    with torch.no_grad():
        return torch.sigmoid(head(x)).cpu().numpy()


def scene_folds(scene_ids, folds: int = FOLDS) -> np.ndarray:
    """Each scene's cross-fitting fold, from its id alone (no random stream drawn; the same in every run)."""
    return np.array([seed_from_key(f"presence-fold|{sid}", bits=32) % folds for sid in scene_ids], dtype=np.int64)


def cross_fitted(features: np.ndarray, labels: np.ndarray, scene_ids: list[str], extra: np.ndarray,
                 extra_labels: np.ndarray, extra_scene_ids: list[str], *, folds: int = FOLDS,
                 **fit_args) -> np.ndarray:
    """Out-of-fold probabilities of the training scenes: each from a head fitted without its fold's scenes
    (nor their masked views, `extra`, grouped by `extra_scene_ids`). S x K; NaN rows where a fold held every
    training scene (nothing to fit on)."""
    return fit_with_cross_fitting(features, labels, scene_ids, extra, extra_labels, extra_scene_ids, folds=folds,
                                  **fit_args)[1]


def fit_with_cross_fitting(features: np.ndarray, labels: np.ndarray, scene_ids: list[str], extra: np.ndarray,
                           extra_labels: np.ndarray, extra_scene_ids: list[str], *, folds: int = FOLDS,
                           **fit_args) -> tuple[PresenceHead, np.ndarray]:
    """The head fitted on every row (the training scenes and their masked views `extra`) and `cross_fitted`'s
    out-of-fold probabilities, all heads fitted together (`fit_presence_heads`)."""
    rows = np.concatenate([features, extra]) if len(extra) else np.asarray(features)
    row_labels = np.concatenate([labels, extra_labels]) if len(extra) else np.asarray(labels)
    fold = np.concatenate([scene_folds(scene_ids, folds), scene_folds(extra_scene_ids, folds)])
    scene_fold = fold[:len(features)]
    # Nothing to predict, or nothing left to fit on: that fold's scenes stay NaN.
    kept = [f for f in range(folds) if (scene_fold == f).any() and not (scene_fold == f).all()]
    heads = fit_presence_heads(rows, row_labels, [np.ones(len(rows), dtype=bool)] + [fold != f for f in kept],
                               **fit_args)
    out = np.full(labels.shape, np.nan, dtype=np.float32)
    for f, head in zip(kept, heads[1:], strict=True):
        out[scene_fold == f] = probabilities(head, features[scene_fold == f])
    return heads[0], out


def presence_scores(head: PresenceHead, features: np.ndarray, labels: np.ndarray, categories: list[str], *,
                    threshold: float | None = None) -> dict:
    """Per category: average precision of the head's probabilities, the category's frequency (the AP of a
    random ranking), and precision/recall of "present" (p >= its threshold: `threshold`, or None for the
    head's own per-category ones); their means over categories."""
    probs = probabilities(head, features)
    thresholds = head.threshold.tolist() if threshold is None else [threshold] * len(categories)
    per = {}
    for k, name in enumerate(categories):
        y, p = labels[:, k], probs[:, k]
        said = p >= thresholds[k]
        per[name] = {"ap": average_precision(y, p), "frequency": float(y.mean()) if len(y) else float("nan"),
                     "threshold": thresholds[k] if np.isfinite(thresholds[k]) else None,
                     "precision": float(y[said].mean()) if said.any() else None,
                     "recall": float(said[y > 0].mean()) if (y > 0).any() else None}
    scored = [v for v in per.values() if not np.isnan(v["ap"])]
    said_any = [v for v in per.values() if v["precision"] is not None]
    recalled = [v for v in per.values() if v["recall"] is not None]
    return {"n_scenes": int(len(labels)), "threshold": "per category" if threshold is None else threshold,
            "mean_ap": float(np.mean([v["ap"] for v in scored])) if scored else float("nan"),
            "mean_frequency": float(np.mean([v["frequency"] for v in scored])) if scored else float("nan"),
            "mean_precision": float(np.mean([v["precision"] for v in said_any])) if said_any else None,
            "mean_recall": float(np.mean([v["recall"] for v in recalled])) if recalled else None,
            "per_category": per}


def fit_thresholds(head: PresenceHead, probs: np.ndarray, labels: np.ndarray, categories: list[str], *,
                   precision: float = PRESENT_PRECISION, min_present: int = MIN_PRESENT,
                   confidence_z: float = CONFIDENCE_Z) -> dict:
    """Set each category's threshold on `head` to the lowest one whose precision of "present" on these
    probabilities (held-out: out-of-fold or validation) has its lower bound at `confidence_z` >= `precision`;
    a category that cannot reach it is never judged present (threshold infinite: it always stays in the
    look), and the returned record says so."""
    record = {}
    for k, name in enumerate(categories):
        t = precision_threshold(probs[:, k], labels[:, k] > 0, precision=precision, min_yes=min_present,
                                confidence_z=confidence_z)
        head.threshold[k] = float("inf") if t is None else t
        record[name] = {"threshold": t} if t is not None else {
            "threshold": None, "fallback": f"precision {precision} not reached on held-out scenes: never left out"}
    return record


def masked_views(data: TrainingData, categories: list[str], *,
                 maps: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features of the cached clean masked views of the training pairs (pooled N x C, or N x C x h x w `maps`),
    each labelled with its scene's categories less the left-out product's (unless another product of the
    scene has it), N x K; and each view's scene id."""
    if data.scenes is None:
        return np.zeros((0, 0), np.float32), np.zeros((0, len(categories)), np.float32), []
    ds, column = data.dataset, {c: k for k, c in enumerate(categories)}
    by_scene: dict[str, list[str]] = {}
    for pair in ds.pairs:
        by_scene.setdefault(pair.scene_id, []).append(ds.products[pair.product_id].category)
    rows = {it.key: i for i, it in enumerate(data.scenes.items) if it.augment_seed is None and data.scenes.valid[i]}
    keep = [j for j in data.train_pairs if str(j) in rows]
    labels = np.zeros((len(keep), len(categories)), np.float32)
    for n, j in enumerate(keep):
        pair = ds.pairs[j]
        cats = list(by_scene[pair.scene_id])
        cats.remove(ds.products[pair.product_id].category)
        labels[n, [column[c] for c in cats]] = 1.0
    views = torch.from_numpy(data.scenes.features[[rows[str(j)] for j in keep]])
    return (views.float() if maps else pooled(views.float())).numpy(), labels, [ds.pairs[j].scene_id for j in keep]


def split_rows(scene_ids: list[str], split: dict, part: str) -> np.ndarray:
    wanted = set(split[part])
    return np.array([i for i, sid in enumerate(scene_ids) if sid in wanted], dtype=np.int64)


def train_presence(embedder: StyleEmbedder, data: TrainingData, out_dir, cfg: TrainConfig, device) -> dict:
    """Fit the presence head on the training scenes, attach it to `embedder`; return what to record
    (settings and validation scores)."""
    backbone = embedder.backbone if embedder.backbone is not None and not embedder.freeze_backbone else None
    scene_ids, features = scene_features(data, out_dir, cfg, device, backbone=backbone, maps=REGION_POOLING)
    labels = scene_labels(data.dataset, scene_ids, embedder.categories)
    train_rows, val_rows = split_rows(scene_ids, data.split, "train"), split_rows(scene_ids, data.split, "val")
    x, y = features[train_rows], labels[train_rows]
    extra_x, extra_y, extra_ids = masked_views(data, embedder.categories, maps=REGION_POOLING) \
        if backbone is None and cfg.presence_masked \
        else (np.zeros((0, *x.shape[1:]), np.float32), np.zeros((0, y.shape[1]), np.float32), [])
    head, out_of_fold = fit_with_cross_fitting(x, y, [scene_ids[i] for i in train_rows], extra_x, extra_y, extra_ids)
    held_out = np.concatenate([out_of_fold, probabilities(head, features[val_rows])])
    held_labels = np.concatenate([y, labels[val_rows]])
    scored = ~np.isnan(held_out).any(axis=1)          # a training set too small to cross-fit leaves NaN rows
    fitted = fit_thresholds(head, held_out[scored], held_labels[scored], embedder.categories)
    embedder.attach_presence(head)
    val = presence_scores(head, features[val_rows], labels[val_rows], embedder.categories)
    return {"threshold": "per category", "thresholds": fitted, "threshold_rule":
            f"lowest with the Wilson lower bound (z = {CONFIDENCE_Z}) of the precision of 'present' >= "
            f"{PRESENT_PRECISION} on >= {MIN_PRESENT} scenes, on {FOLDS}-fold out-of-fold probabilities of the "
            f"{len(train_rows)} training scenes and those of the {len(val_rows)} validation scenes",
            "steps": STEPS, "lr": LR, "weight_decay": WEIGHT_DECAY,
            "features": ("every region of the backbone map (log-mean-exp pooled logits)" if REGION_POOLING
                         else "pooled backbone map") + " of the unmasked scene" + (
                "; and of the training pairs' masked views" if len(extra_x) else ""),
            "n_train_scenes": int(len(train_rows)), "n_masked_views": int(len(extra_x)),
            "val_mean_ap": val["mean_ap"], "val_mean_frequency": val["mean_frequency"]}


def evaluate_presence(embedder: StyleEmbedder, data: TrainingData, out_dir, cfg: TrainConfig, device, *,
                      split: str = "test") -> dict:
    """The presence head's scores on one split's scenes (report.json's `presence`)."""
    if embedder.presence is None:
        return {"available": False, "note": "the checkpoint has no category-presence head"}
    backbone = embedder.backbone if embedder.backbone is not None and not embedder.freeze_backbone else None
    scene_ids, features = scene_features(data, out_dir, cfg, device, backbone=backbone,
                                         maps=embedder.presence.pools_regions)
    rows = split_rows(scene_ids, data.split, split)
    labels = scene_labels(data.dataset, scene_ids, embedder.categories)
    scores = presence_scores(embedder.presence, features[rows], labels[rows], embedder.categories)
    return {"available": True, "split": split, **scores}
