"""The loss every mode trains with: hybrid-distance triplets, against an explicit loop over triplets."""
import pytest
import torch
import torch.nn.functional as F

from jobs.training.config import TrainConfig
from jobs.training.strategy import hybrid_triplet_loss, ranking_loss, shared_ranking_loss
from pipeline.distances import (
    all_distances,
    global_distance,
    hybrid_distance,
    local_distance,
    softmax_loss,
    triplet_loss,
)


def test_hybrid_triplet_loss_equals_a_loop_over_triplets():
    g = torch.Generator().manual_seed(0)
    B, K, R, d, margin = 3, 4, 49, 8, 0.2
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    f_s, f_i, f_p, e_c = unit(B, d), unit(B, R, d), unit(B, 1 + K, d), unit(B, d)
    terms = []
    for b in range(B):
        def d_h(m, b=b):
            return hybrid_distance(f_s[b:b + 1], f_i[b:b + 1], f_p[b:b + 1, m:m + 1], e_c[b:b + 1].unsqueeze(1))[0, 0]
        terms += [max(0.0, float(d_h(0) - d_h(k) + margin)) for k in range(1, K + 1)]
    assert float(hybrid_triplet_loss(f_s, f_i, f_p, e_c, margin)) == pytest.approx(sum(terms) / len(terms), abs=1e-6)


def test_the_loss_is_float32_whatever_the_embeddings_precision():
    f_s, f_i = F.normalize(torch.randn(2, 4), dim=-1), F.normalize(torch.randn(2, 9, 4), dim=-1)
    f_p, e_c = F.normalize(torch.randn(2, 3, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1)
    half = hybrid_triplet_loss(*(t.bfloat16() for t in (f_s, f_i, f_p, e_c)), margin=0.2)
    assert half.dtype == torch.float32
    assert float(half) == pytest.approx(float(hybrid_triplet_loss(f_s, f_i, f_p, e_c, 0.2)), abs=2e-2)


def test_ranking_loss_is_the_configured_loss_on_the_hybrid_and_on_each_half_when_asked():
    g = torch.Generator().manual_seed(1)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    f_s, f_i, f_p, e_c = unit(3, 8), unit(3, 49, 8), unit(3, 5, 8), unit(3, 8)
    triplet = TrainConfig(loss="triplet")
    assert torch.equal(ranking_loss(f_s, f_i, f_p, e_c, triplet), hybrid_triplet_loss(f_s, f_i, f_p, e_c, 0.2))
    e = e_c.unsqueeze(1).expand(-1, 5, -1)
    d = {"h": hybrid_distance(f_s, f_i, f_p, e), "g": global_distance(f_s, f_p), "l": local_distance(f_i, f_p, e)}
    soft = TrainConfig(loss="softmax", per_half_loss=True, temperature=0.2)
    expected = sum(softmax_loss(x[:, 0], x[:, 1:], 0.2) for x in d.values())
    assert float(ranking_loss(f_s, f_i, f_p, e_c, soft)) == pytest.approx(float(expected), abs=1e-5)
    halves = TrainConfig(loss="triplet", per_half_loss=True)
    expected = sum(triplet_loss(x[:, 0], x[:, 1:], 0.2) for x in d.values())
    assert float(ranking_loss(f_s, f_i, f_p, e_c, halves)) == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("loss", ["softmax", "triplet"])
@pytest.mark.parametrize("per_half", [False, True])
def test_shared_ranking_loss_equals_a_loop_over_each_scene_and_its_marked_products(loss, per_half):
    g = torch.Generator().manual_seed(5)
    B, M, R, d, n_categories = 4, 10, 49, 8, 3
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    f_s, f_i, f_p = unit(B, d), unit(B, R, d), unit(M, d)
    e_k = unit(n_categories, d) * torch.tensor([[1.0], [2.5], [4.0]])   # sharpened categories, as trained
    category_of = torch.randint(0, n_categories, (M,), generator=g)
    positive = torch.tensor([0, 2, 5, 7])
    negatives = torch.rand(B, M, generator=g) < 0.6
    negatives[torch.arange(B), positive] = False
    negatives[:, 9] = True
    cfg = TrainConfig(loss=loss, per_half_loss=per_half, temperature=0.3, margin=0.2)
    names = ("paper", "global", "local") if per_half else ("paper",)
    total = 0.0
    terms = {n: [] for n in names}
    for b in range(B):
        cols = [int(positive[b])] + [m for m in range(M) if negatives[b, m]]
        dist = all_distances(f_s[b:b + 1], f_i[b:b + 1], f_p[cols].unsqueeze(0), e_k[category_of[cols]].unsqueeze(0))
        for n in names:
            row = dist[n][0]
            if loss == "softmax":
                terms[n].append(float(-torch.log_softmax(-row / 0.3, dim=0)[0]))
            else:
                terms[n].extend(max(0.0, float(row[0] - x + 0.2)) for x in row[1:])
    total = sum(sum(v) / len(v) for v in terms.values())
    got = shared_ranking_loss(f_s, f_i, f_p, e_k, category_of, positive, negatives, cfg)
    assert float(got) == pytest.approx(total, rel=1e-5)


def test_the_symmetric_loss_is_the_mean_of_the_scene_side_and_a_loop_over_each_positive_s_scenes():
    g = torch.Generator().manual_seed(9)
    B, M, R, d, n_categories = 5, 12, 49, 8, 3
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    f_s, f_i, f_p = unit(B, d), unit(B, R, d), unit(M, d)
    e_k = unit(n_categories, d) * torch.tensor([[1.0], [2.5], [4.0]])
    category_of = torch.randint(0, n_categories, (M,), generator=g)
    positive = torch.tensor([0, 2, 5, 7, 10])
    negatives = torch.rand(B, M, generator=g) < 0.6
    negatives[torch.arange(B), positive] = False
    negatives[:, 11] = True
    t = 0.3
    scene_side = shared_ranking_loss(f_s, f_i, f_p, e_k, category_of, positive, negatives,
                                     TrainConfig(temperature=t))
    terms = []
    for b in range(B):
        p = int(positive[b])
        scenes = [b] + [o for o in range(B) if o != b and negatives[o, p]]
        row = torch.cat([all_distances(f_s[o:o + 1], f_i[o:o + 1], f_p[p].reshape(1, 1, -1),
                                       e_k[category_of[p]].reshape(1, 1, -1))["paper"][0] for o in scenes])
        terms.append(float(-torch.log_softmax(-row / t, dim=0)[0]))
    got = shared_ranking_loss(f_s, f_i, f_p, e_k, category_of, positive, negatives,
                              TrainConfig(temperature=t, symmetric_loss=True))
    assert float(got) == pytest.approx((float(scene_side) + sum(terms) / B) / 2, rel=1e-5)


@pytest.mark.parametrize("settings", [{"loss": "triplet"}, {"negatives_from": "pair"}])
def test_the_symmetric_loss_needs_the_softmax_over_shared_negatives(settings):
    from common.errors import InputError
    with pytest.raises(InputError, match="--symmetric-loss"):
        TrainConfig(symmetric_loss=True, **settings).check()
    TrainConfig(symmetric_loss=True).check()
