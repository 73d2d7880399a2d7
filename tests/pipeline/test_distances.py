"""Distances and the triplet loss against explicit per-region, per-product loops."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.distances import (
    all_distances,
    all_distances_by_category,
    all_distances_shared,
    attention_weights,
    global_distance,
    hybrid_distance,
    hybrid_queries,
    local_distance,
    local_distance_by_category,
    shared_softmax_loss,
    shared_softmax_loss_by_product,
    shared_triplet_loss,
    softmax_loss,
    triplet_loss,
)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


@pytest.fixture
def batch():
    B, R, M, d = 3, 49, 5, 8
    return unit(B, d, seed=1), unit(B, R, d, seed=2), unit(B, M, d, seed=3), unit(B, M, d, seed=4)


def loop_local(f_i, f_p, e_c):
    """d_l by the definition: softmax over regions of -||f_i - e_c||^2, then the weighted sum."""
    B, R, _ = f_i.shape
    M = f_p.shape[1]
    out = torch.zeros(B, M, dtype=f_i.dtype)
    for b in range(B):
        for m in range(M):
            logits = [-float(((f_i[b, r] - e_c[b, m]) ** 2).sum()) for r in range(R)]
            z = sum(torch.exp(torch.tensor(x, dtype=torch.float64)) for x in logits)
            for r in range(R):
                a = torch.exp(torch.tensor(logits[r], dtype=torch.float64)) / z
                out[b, m] += a * ((f_i[b, r] - f_p[b, m]) ** 2).sum()
    return out


def test_global_distance_matches_loop(batch):
    f_s, _, f_p, _ = batch
    d = global_distance(f_s, f_p)
    for b in range(f_s.shape[0]):
        for m in range(f_p.shape[1]):
            assert d[b, m].item() == pytest.approx(float(((f_s[b] - f_p[b, m]) ** 2).sum()), abs=1e-10)


def test_global_distance_is_two_minus_two_cosine_on_unit_vectors(batch):
    f_s, _, f_p, _ = batch
    cos = (f_s.unsqueeze(1) * f_p).sum(-1)
    assert torch.allclose(global_distance(f_s, f_p), 2 - 2 * cos, atol=1e-10)


def test_local_distance_matches_loop(batch):
    _, f_i, f_p, e_c = batch
    assert torch.allclose(local_distance(f_i, f_p, e_c), loop_local(f_i, f_p, e_c), atol=1e-10)


def test_hybrid_is_mean_of_global_and_local(batch):
    f_s, f_i, f_p, e_c = batch
    expected = 0.5 * (global_distance(f_s, f_p) + loop_local(f_i, f_p, e_c))
    assert torch.allclose(hybrid_distance(f_s, f_i, f_p, e_c), expected, atol=1e-10)
    all_d = all_distances(f_s, f_i, f_p, e_c)
    assert torch.allclose(all_d["hybrid"], expected, atol=1e-10)


def test_attention_sums_to_one_and_prefers_the_region_nearest_the_category():
    d = 8
    f_i = unit(1, 49, d, seed=5)
    e_c = f_i[:, 17:18, :].clone()  # the category embedding sits exactly on region 17
    a = attention_weights(f_i, e_c)
    assert a.shape == (1, 1, 49)
    assert torch.allclose(a.sum(-1), torch.ones(1, 1, dtype=a.dtype))
    assert int(a.argmax()) == 17
    # moving e_c toward another region moves the attention there
    e_c2 = F.normalize(0.2 * e_c + f_i[:, 3:4, :], dim=-1)
    assert attention_weights(f_i, e_c2)[0, 0, 3] > a[0, 0, 3]


def test_triplet_loss_matches_explicit_triplets():
    d_pos = torch.tensor([0.1, 0.9, 0.5])
    d_neg = torch.tensor([[0.5, 0.2], [1.5, 0.95], [0.1, 2.0]])
    margin = 0.2
    expected = sum(max(0.0, float(p) - float(n) + margin) for p, row in zip(d_pos, d_neg, strict=True) for n in row) / 6
    assert triplet_loss(d_pos, d_neg, margin).item() == pytest.approx(expected)
    assert triplet_loss(d_pos, d_neg[:, 0], margin).item() == pytest.approx(
        sum(max(0.0, float(p) - float(n) + margin) for p, n in zip(d_pos, d_neg[:, 0], strict=True)) / 3)


@pytest.mark.parametrize("call, name", [
    (lambda: global_distance(torch.zeros(2, 4), torch.zeros(2, 4)), "f_p"),
    (lambda: global_distance(torch.zeros(2, 4), torch.zeros(3, 1, 4)), "batch size"),
    (lambda: global_distance(torch.zeros(2, 4), torch.zeros(2, 1, 5)), "embedding size"),
    (lambda: attention_weights(torch.zeros(2, 49), torch.zeros(2, 1, 4)), "f_i"),
    (lambda: local_distance(torch.zeros(2, 49, 4), torch.zeros(2, 3, 4), torch.zeros(2, 2, 4)), "e_c"),
    (lambda: triplet_loss(torch.zeros(2), torch.zeros(3)), "d_neg"),
])
def test_bad_shapes_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_softmax_loss_equals_an_explicit_log_softmax():
    d_pos = torch.tensor([0.3, 1.2], dtype=torch.float64)
    d_neg = torch.tensor([[0.5, 0.9, 2.0], [0.1, 1.5, 3.0]], dtype=torch.float64)
    t = 0.1
    expected = 0.0
    for b in range(2):
        logits = [-float(d_pos[b]) / t] + [-float(x) / t for x in d_neg[b]]
        top = max(logits)
        expected += -(logits[0] - top - np.log(sum(np.exp(v - top) for v in logits)))
    assert float(softmax_loss(d_pos, d_neg, t)) == pytest.approx(expected / 2, rel=1e-9)
    assert float(softmax_loss(torch.zeros(1), torch.full((1, 3), 4.0), 0.1)) < 1e-6   # far negatives: ~0 loss


def by_category(B=3, R=49, M=40, K=5, d=16, dtype=torch.float64, seed=10):
    """Scenes, products and K category embeddings, each product of a random one of the K categories."""
    g = torch.Generator().manual_seed(seed)
    f_i = F.normalize(torch.randn(B, R, d, generator=g, dtype=dtype), dim=-1)
    f_p = F.normalize(torch.randn(B, M, d, generator=g, dtype=dtype), dim=-1)
    e_k = F.normalize(torch.randn(B, K, d, generator=g, dtype=dtype), dim=-1)
    category_of = torch.randint(0, K, (B, M), generator=g)
    e_c = torch.gather(e_k, 1, category_of.unsqueeze(-1).expand(-1, -1, d))    # each product's own e_c
    return f_i, f_p, e_k, category_of, e_c


def test_local_distance_by_category_equals_the_explicit_form_and_the_loop():
    f_i, f_p, e_k, category_of, e_c = by_category()
    factored = local_distance_by_category(f_i, f_p, e_k, category_of)
    assert torch.allclose(factored, local_distance(f_i, f_p, e_c), atol=1e-12)
    assert torch.allclose(factored[:, :6], loop_local(f_i, f_p[:, :6], e_c[:, :6]), atol=1e-10)


def test_local_distance_by_category_in_float32_agrees_to_rounding():
    # serving runs float32: the factored sum and the per-region one round differently, by ~1e-6 on [0, 4]
    f_i, f_p, e_k, category_of, e_c = by_category(B=2, M=300, K=8, d=128, dtype=torch.float32, seed=11)
    factored = local_distance_by_category(f_i, f_p, e_k, category_of)
    assert (factored >= 0).all()
    assert torch.allclose(factored, local_distance(f_i, f_p, e_c), atol=1e-5)


def test_all_distances_by_category_equals_all_distances():
    f_i, f_p, e_k, category_of, e_c = by_category(seed=12)
    f_s = unit(f_i.shape[0], f_i.shape[-1], seed=13)
    w = torch.rand(category_of.shape, generator=torch.Generator().manual_seed(14), dtype=f_i.dtype)
    explicit = all_distances(f_s, f_i, f_p, e_c, local_weight=w)
    factored = all_distances_by_category(f_s, f_i, f_p, e_k, category_of, local_weight=w)
    assert explicit.keys() == factored.keys()
    for name in explicit:
        assert torch.allclose(factored[name], explicit[name], atol=1e-12), name


def test_hybrid_queries_inner_product_is_the_hybrid_distance_of_every_product():
    # stage 1 searches the index by these vectors: d_h = 2 - 2 <q_k, f_p> for unit vectors, each category's w
    f_i, f_p, e_k, category_of, _ = by_category(seed=15)
    f_s = unit(f_i.shape[0], f_i.shape[-1], seed=16)
    w_k = torch.rand(e_k.shape[:2], generator=torch.Generator().manual_seed(17), dtype=f_i.dtype)
    w = torch.gather(w_k, 1, category_of)                              # each product's own category's weight
    want = all_distances_by_category(f_s, f_i, f_p, e_k, category_of, local_weight=w)["hybrid"]
    q = hybrid_queries(f_s, f_i, e_k, w_k)                             # B x K x d
    assert q.shape == e_k.shape
    q_of_product = torch.gather(q, 1, category_of.unsqueeze(-1).expand(-1, -1, q.shape[-1]))
    assert torch.allclose(2.0 - 2.0 * (q_of_product * f_p).sum(-1), want, atol=1e-12)


def test_hybrid_queries_rank_a_category_as_the_hybrid_does_for_scene_vectors_of_any_norm():
    f_i, f_p, e_k, _, _ = by_category(seed=18, K=1)
    f_s = 3.0 * unit(f_i.shape[0], f_i.shape[-1], seed=19)            # the ranking needs unit products only
    f_i = 0.5 * f_i
    same = torch.zeros(f_p.shape[:2], dtype=torch.long)
    want = all_distances_by_category(f_s, f_i, f_p, e_k, same, local_weight=0.3)["hybrid"]
    got = -2.0 * (hybrid_queries(f_s, f_i, e_k, 0.3)[:, 0:1] * f_p).sum(-1)
    gap = want - got                                                  # a constant per scene: the same order
    assert torch.allclose(gap, gap[:, :1].expand_as(gap), atol=1e-12)
    assert torch.equal(want.argsort(-1), got.argsort(-1))


def test_hybrid_queries_forms_of_the_weight():
    f_i, _, e_k, _, _ = by_category(seed=21)
    f_s = unit(f_i.shape[0], f_i.shape[-1], seed=22)
    assert torch.allclose(hybrid_queries(f_s, f_i, e_k, 0.0), f_s.unsqueeze(1).expand_as(e_k))   # the global stage
    half = torch.full(e_k.shape[:2], 0.5, dtype=f_s.dtype)
    assert torch.allclose(hybrid_queries(f_s, f_i, e_k), hybrid_queries(f_s, f_i, e_k, half))    # None: the paper's
    with pytest.raises(ValueError, match="local_weight"):
        hybrid_queries(f_s, f_i, e_k, half[:, :-1])


def test_local_distance_by_category_refuses_a_category_index_of_another_shape():
    f_i, f_p, e_k, category_of, _ = by_category()
    with pytest.raises(ValueError, match="category_of"):
        local_distance_by_category(f_i, f_p, e_k, category_of[:, :-1])


def shared_columns(seed=20, B=4, M=9):
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(B, M, generator=g, dtype=torch.float64) * 4
    positive = torch.tensor([0, 3, 5, 8])
    negatives = torch.rand(B, M, generator=g) < 0.5
    negatives[torch.arange(B), positive] = False
    negatives[:, 1] = True   # every row has at least one negative
    return d, positive, negatives


def test_shared_softmax_loss_equals_an_explicit_softmax_over_each_rows_own_columns():
    d, positive, negatives = shared_columns()
    t = 0.2
    expected = 0.0
    for b in range(d.shape[0]):
        cols = [int(positive[b])] + [m for m in range(d.shape[1]) if negatives[b, m]]
        logits = np.array([-float(d[b, m]) / t for m in cols])
        expected += -(logits[0] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
    assert float(shared_softmax_loss(d, positive, negatives, t)) == pytest.approx(expected / d.shape[0], rel=1e-9)
    # the same as softmax_loss when the columns are gathered row by row (rows with equal negative counts)
    same = torch.zeros_like(negatives)
    same[:, 1] = same[:, 2] = True
    same[torch.arange(4), positive] = False
    same[0, 2], same[0, 4] = False, True
    same[1, 2], same[1, 6] = False, True
    keep = [[m for m in range(9) if same[b, m]] for b in range(4)]
    d_neg = torch.stack([d[b, keep[b]] for b in range(4)])
    assert float(shared_softmax_loss(d, positive, same, t)) == pytest.approx(
        float(softmax_loss(d[torch.arange(4), positive], d_neg, t)), rel=1e-12)


def test_the_product_side_softmax_ranks_each_positive_s_scene_among_the_scenes_that_mark_it_negative():
    d, positive, negatives = shared_columns(seed=5)
    negatives[:, positive[1]] = True        # a positive that is every other scene's negative
    negatives[1, positive[1]] = False
    t = 0.3
    expected = 0.0
    for b in range(d.shape[0]):
        p = int(positive[b])
        scenes = [b] + [o for o in range(d.shape[0]) if o != b and negatives[o, p]]
        logits = np.array([-float(d[o, p]) / t for o in scenes])
        expected += -(logits[0] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
    got = float(shared_softmax_loss_by_product(d, positive, negatives, t))
    assert got == pytest.approx(expected / d.shape[0], rel=1e-9)
    assert got != pytest.approx(float(shared_softmax_loss(d, positive, negatives, t)))   # not the scene side
    with pytest.raises(ValueError, match="negatives must be"):
        shared_softmax_loss_by_product(d, positive, negatives[:, :3])


def test_shared_triplet_loss_is_the_mean_over_every_row_and_marked_negative():
    d, positive, negatives = shared_columns(seed=21)
    margin = 0.3
    hinges = [max(0.0, float(d[b, positive[b]]) - float(d[b, m]) + margin)
              for b in range(d.shape[0]) for m in range(d.shape[1]) if negatives[b, m]]
    assert float(shared_triplet_loss(d, positive, negatives, margin)) == pytest.approx(np.mean(hinges), rel=1e-12)


def test_shared_losses_refuse_a_positive_marked_as_a_negative_and_bad_shapes():
    d, positive, negatives = shared_columns()
    bad = negatives.clone()
    bad[2, positive[2]] = True
    with pytest.raises(ValueError, match="positive column"):
        shared_softmax_loss(d, positive, bad)
    with pytest.raises(ValueError, match="negatives must be"):
        shared_triplet_loss(d, positive, negatives[:, :3])


def test_all_distances_shared_equals_the_by_category_form_on_the_products_repeated_per_scene():
    f_i, f_p, e_k, _, _ = by_category(B=3, M=30, K=4)
    shared_p, shared_k = f_p[0], e_k[0] * torch.tensor([[1.0], [2.0], [3.5], [0.7]], dtype=torch.float64)
    category_of = torch.randint(0, 4, (30,), generator=torch.Generator().manual_seed(3))
    f_s = unit(3, f_p.shape[-1], seed=9)
    w = torch.rand(3, 30, dtype=torch.float64)
    got = all_distances_shared(f_s, f_i, shared_p, shared_k, category_of, w)
    want = all_distances_by_category(f_s, f_i, shared_p.expand(3, -1, -1), shared_k.expand(3, -1, -1),
                                     category_of.expand(3, -1), w)
    for name in ("global", "local", "hybrid", "paper"):
        assert torch.allclose(got[name], want[name], atol=1e-12), name
    with pytest.raises(ValueError, match="category_of"):
        all_distances_shared(f_s, f_i, shared_p, shared_k, category_of[:5])
