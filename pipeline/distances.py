"""The one definition of the global, attention, local and hybrid distances and the training losses.

Shapes follow one batched convention so training (pairs, M=1 or 2), evaluation (one scene against
its candidates) and serving (one scene against C candidates) share the same code:
  f_s: B x d scene-global embeddings      f_i: B x R x d scene-region embeddings
  f_p: B x M x d product embeddings       e_c: B x M x d category embedding of each product
A distance comes back as B x M; attention weights as B x M x R. Every embedding is a unit vector but e_c,
whose norm is its category's attention sharpness (1 in the paper; pipeline.embedder.category_embeddings).

The hybrid distance is d_h = (1 - w) d_g + w d_l with a local weight w per candidate (B x M, or a
scalar). The paper's form is w = 1/2 everywhere (PAPER_LOCAL_WEIGHT); a checkpoint may carry one w
per category, fitted on validation (pipeline.evaluation.fit_local_weights).
"""
from __future__ import annotations

import torch

from common import defaults


def _check(name: str, t: torch.Tensor, ndim: int, what: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != ndim:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be {what}, got shape {shape}")


def _check_same(name_a: str, a: int, name_b: str, b: int, dim: str) -> None:
    if a != b:
        raise ValueError(f"{name_a} and {name_b} disagree on {dim}: {a} vs {b}")


def pairwise_squared_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_j - b_k||^2 for a: B x J x d, b: B x K x d -> B x J x K (clamped at 0 against rounding)."""
    sq = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * a @ b.transpose(-1, -2)
    return sq.clamp_min_(0.0)


def global_distance(f_s: torch.Tensor, f_p: torch.Tensor) -> torch.Tensor:
    """d_g(s, p) = ||f_s - f_p||^2 -> B x M."""
    _check("f_s", f_s, 2, "B x d")
    _check("f_p", f_p, 3, "B x M x d")
    _check_same("f_s", f_s.shape[0], "f_p", f_p.shape[0], "batch size B")
    _check_same("f_s", f_s.shape[1], "f_p", f_p.shape[2], "embedding size d")
    return pairwise_squared_l2(f_s.unsqueeze(1), f_p).squeeze(1)


def attention_weights(f_i: torch.Tensor, e_c: torch.Tensor) -> torch.Tensor:
    """a_r = softmax_r(-||f_i[r] - e_c||^2): each category's attention over the scene's regions -> B x M x R."""
    _check("f_i", f_i, 3, "B x R x d")
    _check("e_c", e_c, 3, "B x M x d")
    _check_same("f_i", f_i.shape[0], "e_c", e_c.shape[0], "batch size B")
    _check_same("f_i", f_i.shape[2], "e_c", e_c.shape[2], "embedding size d")
    return torch.softmax(-pairwise_squared_l2(e_c, f_i), dim=-1)


def local_distance(f_i: torch.Tensor, f_p: torch.Tensor, e_c: torch.Tensor) -> torch.Tensor:
    """d_l(s, p) = sum_r a_r(s, c_p) * ||f_i[r] - f_p||^2 -> B x M."""
    _check("f_p", f_p, 3, "B x M x d")
    if f_p.shape != e_c.shape:
        raise ValueError(f"f_p and e_c must have the same shape, got {tuple(f_p.shape)} and {tuple(e_c.shape)}")
    weights = attention_weights(f_i, e_c)
    return (weights * pairwise_squared_l2(f_p, f_i)).sum(-1)


PAPER_LOCAL_WEIGHT = 0.5
# Squared distances on the unit sphere lie in [0, 4]: T = 0.2 turns a 0.2 gap (the triplet margin) into e. Chosen on
# validation over 3 training seeds (docs/quality.md, fourth round): 0.2 and 0.4 level, 0.1 below them, 0.05 worse.
TEMPERATURE = 0.2


def combine(d_g: torch.Tensor, d_l: torch.Tensor, local_weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """d_h = (1 - w) d_g + w d_l, w broadcast against B x M (None: the paper's 1/2)."""
    if local_weight is None:
        return PAPER_LOCAL_WEIGHT * (d_g + d_l)
    w = torch.as_tensor(local_weight, dtype=d_g.dtype, device=d_g.device)
    if w.ndim and w.shape != d_g.shape:
        raise ValueError(f"local_weight must be a scalar or {tuple(d_g.shape)}, got {tuple(w.shape)}")
    return (1.0 - w) * d_g + w * d_l


def hybrid_distance(f_s: torch.Tensor, f_i: torch.Tensor, f_p: torch.Tensor, e_c: torch.Tensor,
                    local_weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """d_h = (1 - w) d_g + w d_l -> B x M (w: B x M local weights, a scalar, or None for the paper's 1/2)."""
    return combine(global_distance(f_s, f_p), local_distance(f_i, f_p, e_c), local_weight)


def all_distances(f_s, f_i, f_p, e_c, local_weight: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:
    """Global, local, hybrid (with `local_weight`) and paper (w = 1/2) distances at once (one attention)."""
    d_g = global_distance(f_s, f_p)
    d_l = local_distance(f_i, f_p, e_c)
    return {"global": d_g, "local": d_l, "hybrid": combine(d_g, d_l, local_weight), "paper": combine(d_g, d_l)}


def local_distance_by_category(f_i: torch.Tensor, f_p: torch.Tensor, e_k: torch.Tensor,
                               category_of: torch.Tensor) -> torch.Tensor:
    """local_distance for products whose category embeddings come from K categories -> B x M.

    e_k: B x K x d category embeddings, category_of: B x M indices into K (product m's e_c is e_k[category_of]).
    The same d_l, factored: the attention a depends on the category alone and sums to 1 over the regions, so
    sum_r a_r ||f_i[r] - f_p||^2 = sum_r a_r ||f_i[r]||^2 + ||f_p||^2 - 2 <sum_r a_r f_i[r], f_p>: one
    attention and one pooled scene vector per category, then O(d) per product instead of O(R d) twice (the
    attention and the per-region distances). Equal to local_distance to float rounding (tested); serving's
    stage 2 re-ranks C candidates of a few categories this way.
    """
    _check("f_i", f_i, 3, "B x R x d")
    _check("f_p", f_p, 3, "B x M x d")
    _check("e_k", e_k, 3, "B x K x d")
    if category_of.shape != f_p.shape[:2]:
        raise ValueError(f"category_of must be B x M = {tuple(f_p.shape[:2])}, got {tuple(category_of.shape)}")
    a = attention_weights(f_i, e_k)                                    # B x K x R
    pooled = a @ f_i                                                   # B x K x d: sum_r a_r f_i[r]
    spread = (a * (f_i * f_i).sum(-1).unsqueeze(1)).sum(-1)            # B x K: sum_r a_r ||f_i[r]||^2
    index = category_of.long()
    # <f_p, pooled_k> for every k, then product m's own k: a B x M x K product is cheaper than gathering B x M x d
    dots = torch.gather(f_p @ pooled.transpose(-1, -2), 2, index.unsqueeze(-1)).squeeze(-1)
    d_l = torch.gather(spread, 1, index) + (f_p * f_p).sum(-1) - 2.0 * dots
    return d_l.clamp_min_(0.0)   # a mean of squared distances: >= 0 but for rounding, as pairwise_squared_l2


def all_distances_by_category(f_s, f_i, f_p, e_k, category_of,
                              local_weight: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:
    """all_distances for products of K categories (e_k, category_of as in local_distance_by_category)."""
    d_g = global_distance(f_s, f_p)
    d_l = local_distance_by_category(f_i, f_p, e_k, category_of)
    return {"global": d_g, "local": d_l, "hybrid": combine(d_g, d_l, local_weight), "paper": combine(d_g, d_l)}


def hybrid_queries(f_s: torch.Tensor, f_i: torch.Tensor, e_k: torch.Tensor,
                   local_weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per scene and category, the vector whose inner product ranks that category's products by d_h -> B x K x d.

    f_s: B x d, f_i: B x R x d, e_k: B x K x d, local_weight: B x K, a scalar or None (the paper's 1/2).
    The attention depends on the scene and the category alone and sums to 1, so for a product p of category k
    d_h = const(s, k) + ||f_p||^2 - 2 <q_k, f_p> with q_k = (1 - w_k) f_s + w_k sum_r a_r(s, k) f_i[r]
    (local_distance_by_category's factoring). Every product embedding is a unit vector (the index's contract),
    so within a category the largest <q_k, f_p> are exactly the smallest hybrid distances, and with unit f_s
    and f_i[r], d_h = 2 - 2 <q_k, f_p>: stage 1 can search the index by the hybrid itself (tested against
    all_distances_by_category). With w = 0, q_k = f_s: the global-distance stage.
    """
    _check("f_s", f_s, 2, "B x d")
    _check("f_i", f_i, 3, "B x R x d")
    _check("e_k", e_k, 3, "B x K x d")
    _check_same("f_s", f_s.shape[0], "f_i", f_i.shape[0], "batch size B")
    pooled = attention_weights(f_i, e_k) @ f_i                         # B x K x d: sum_r a_r f_i[r]
    w = torch.full(pooled.shape[:2], PAPER_LOCAL_WEIGHT, dtype=pooled.dtype, device=pooled.device) \
        if local_weight is None else torch.as_tensor(local_weight, dtype=pooled.dtype, device=pooled.device)
    if w.ndim and w.shape != pooled.shape[:2]:
        raise ValueError(f"local_weight must be a scalar or B x K = {tuple(pooled.shape[:2])}, got {tuple(w.shape)}")
    w = w.expand(pooled.shape[:2]).unsqueeze(-1)
    return (1.0 - w) * f_s.unsqueeze(1) + w * pooled


def all_distances_shared(f_s, f_i, f_p, e_k, category_of,
                         local_weight: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:
    """all_distances_by_category when every scene meets the same products: f_p M x d, e_k K x d, category_of M
    (indices into K) -> B x M each. The same factored d_l and the same d_g as matrix products over the shared
    products, never a B x M x d tensor: a training step with a batch's products shared across its scenes (64
    scenes x 1,088 products, one thread, forward and backward) took 420 ms through the expanded form and 34 ms
    this way, against 12 ms for 17 products a scene (jobs.training.strategy.shared_ranking_loss)."""
    _check("f_s", f_s, 2, "B x d")
    _check("f_i", f_i, 3, "B x R x d")
    _check("f_p", f_p, 2, "M x d")
    _check("e_k", e_k, 2, "K x d")
    if category_of.shape != f_p.shape[:1]:
        raise ValueError(f"category_of must be M = ({f_p.shape[0]},), got {tuple(category_of.shape)}")
    b = f_s.shape[0]
    p_sq = (f_p * f_p).sum(-1)                                                      # M
    d_g = ((f_s * f_s).sum(-1).unsqueeze(1) + p_sq.unsqueeze(0) - 2.0 * f_s @ f_p.T).clamp_min(0.0)
    a = attention_weights(f_i, e_k.unsqueeze(0).expand(b, -1, -1))                # B x K x R
    pooled = a @ f_i                                                                # B x K x d
    spread = (a * (f_i * f_i).sum(-1).unsqueeze(1)).sum(-1)                         # B x K
    index = category_of.long().unsqueeze(0).expand(b, -1)                           # B x M
    dots = torch.gather(pooled @ f_p.T, 1, index.unsqueeze(1)).squeeze(1)           # B x M: <pooled_{c_m}, f_p[m]>
    d_l = (torch.gather(spread, 1, index) + p_sq.unsqueeze(0) - 2.0 * dots).clamp_min(0.0)
    return {"global": d_g, "local": d_l, "hybrid": combine(d_g, d_l, local_weight), "paper": combine(d_g, d_l)}


def triplet_loss(d_pos: torch.Tensor, d_neg: torch.Tensor, margin: float = defaults.MARGIN) -> torch.Tensor:
    """mean over triplets of max(0, d(s, p+) - d(s, p-) + margin); d_pos: B, d_neg: B or B x K negatives."""
    _check("d_pos", d_pos, 1, "B")
    if d_neg.ndim not in (1, 2) or d_neg.shape[0] != d_pos.shape[0]:
        raise ValueError(f"d_neg must be B or B x K with B={d_pos.shape[0]}, got shape {tuple(d_neg.shape)}")
    pos = d_pos if d_neg.ndim == 1 else d_pos.unsqueeze(1)
    return torch.relu(pos - d_neg + margin).mean()


def softmax_loss(d_pos: torch.Tensor, d_neg: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Multi-negative (InfoNCE) loss: mean over rows of -log softmax(-d / T)[positive]; d_pos: B, d_neg: B x K.

    Every negative of a row pulls on the gradient in proportion to how close it is, where the triplet
    loss sees each negative alone and stops at the margin.
    """
    _check("d_pos", d_pos, 1, "B")
    _check("d_neg", d_neg, 2, "B x K")
    _check_same("d_pos", d_pos.shape[0], "d_neg", d_neg.shape[0], "batch size B")
    logits = -torch.cat([d_pos.unsqueeze(1), d_neg], dim=1) / temperature
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(d_pos), dtype=torch.long, device=d_pos.device))


def shared_softmax_loss(d: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                        temperature: float = TEMPERATURE) -> torch.Tensor:
    """softmax_loss when the rows rank against shared columns: d is B x M distances from each scene to every
    product of a batch, positive (B) the column of each row's positive, negatives (B x M booleans) the columns
    that count as its negatives; every other column is left out of that row's softmax."""
    _check("d", d, 2, "B x M")
    if negatives.shape != d.shape or positive.shape != d.shape[:1]:
        raise ValueError(f"negatives must be {tuple(d.shape)} and positive ({d.shape[0]},), "
                         f"got {tuple(negatives.shape)} and {tuple(positive.shape)}")
    rows = torch.arange(d.shape[0], device=d.device)
    if negatives[rows, positive].any():
        raise ValueError("a row's positive column is also marked as one of its negatives")
    keep = negatives.clone()
    keep[rows, positive] = True
    logits = (-d / temperature).masked_fill(~keep, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, positive.long())


def shared_softmax_loss_by_product(d: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                                   temperature: float = TEMPERATURE) -> torch.Tensor:
    """The product side of shared_softmax_loss (shapes as there): each row's positive product ranks its own scene
    against the batch's other scenes that mark that product as one of their negatives (the second direction of a
    symmetric, CLIP-style loss: a product near every scene is penalised by the scenes it does not complete).

    Row b becomes column positive[b] read down the scenes: d[:, positive].T is B x B with the true scene on the
    diagonal and negatives[:, positive].T says which other scenes count."""
    _check("d", d, 2, "B x M")
    if negatives.shape != d.shape or positive.shape != d.shape[:1]:
        raise ValueError(f"negatives must be {tuple(d.shape)} and positive ({d.shape[0]},), "
                         f"got {tuple(negatives.shape)} and {tuple(positive.shape)}")
    columns = positive.long()
    rows = torch.arange(d.shape[0], device=d.device)
    return shared_softmax_loss(d[:, columns].T, rows, negatives[:, columns].T, temperature)


def shared_triplet_loss(d: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                        margin: float = defaults.MARGIN) -> torch.Tensor:
    """triplet_loss over shared columns (shapes as shared_softmax_loss): the mean over every (row, negative)."""
    _check("d", d, 2, "B x M")
    if negatives.shape != d.shape or positive.shape != d.shape[:1]:
        raise ValueError(f"negatives must be {tuple(d.shape)} and positive ({d.shape[0]},), "
                         f"got {tuple(negatives.shape)} and {tuple(positive.shape)}")
    d_pos = d.gather(1, positive.long().unsqueeze(1))
    hinge = torch.relu(d_pos - d + margin)
    return hinge[negatives].sum() / negatives.sum().clamp_min(1)
