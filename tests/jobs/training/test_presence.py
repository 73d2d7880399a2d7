"""Presence head and thresholds: fitted per category for precision of "present" on held-out probabilities, then
applied by the scores; cross-fitting never lets a scene see itself."""
import numpy as np
import pytest
import torch

from jobs.training import presence
from jobs.training.presence import (
    cross_fitted,
    fit_presence,
    fit_presence_heads,
    fit_thresholds,
    fit_with_cross_fitting,
    presence_scores,
    probabilities,
    scene_folds,
)
from pipeline.embedder import PresenceHead

CATS = ["easy", "hard"]


def _scenes(seed, n=80):
    """Features where category 0 is readable from feature 0 and category 1 is noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
    features = rng.normal(size=(n, 6)).astype(np.float32)
    features[:, 0] += 3.0 * labels[:, 0]
    return features, labels


def test_thresholds_are_fitted_per_category_and_applied_by_the_scores():
    head = fit_presence(*_scenes(0))
    val_x, val_y = _scenes(1)
    with torch.no_grad():
        probs = torch.sigmoid(head(torch.from_numpy(val_x))).numpy()
    record = fit_thresholds(head, probs, val_y, CATS, precision=0.9, min_present=3, confidence_z=0.0)
    t_easy = record["easy"]["threshold"]
    assert t_easy is not None and float(head.threshold[0]) == pytest.approx(t_easy)
    said = probs[:, 0] >= t_easy
    assert said.sum() >= 3 and val_y[said, 0].mean() >= 0.9                  # precision reached on validation
    lower = probs[:, 0][probs[:, 0] < t_easy]
    if len(lower):                                                           # and no lower threshold reaches it
        t = lower.max()
        assert val_y[probs[:, 0] >= t, 0].mean() < 0.9
    # The noise category cannot be that sure: never judged present, and the record says why.
    assert record["hard"]["threshold"] is None and "never left out" in record["hard"]["fallback"]
    assert torch.isinf(head.threshold[1])
    scores = presence_scores(head, val_x, val_y, CATS)
    assert scores["per_category"]["easy"]["precision"] == pytest.approx(float(val_y[said, 0].mean()))
    assert scores["per_category"]["easy"]["recall"] == pytest.approx(float(said[val_y[:, 0] > 0].mean()))
    assert scores["per_category"]["hard"]["precision"] is None and scores["per_category"]["hard"]["recall"] == 0.0
    fixed = presence_scores(head, val_x, val_y, CATS, threshold=0.5)          # one threshold for all, as before
    assert fixed["threshold"] == 0.5 and fixed["per_category"]["hard"]["threshold"] == 0.5


def test_an_untouched_head_says_present_at_one_half():
    head = PresenceHead(4, 3)
    assert torch.equal(head.threshold, torch.full((3,), 0.5))


def test_region_pooling_is_log_mean_exp_of_each_regions_logit_and_the_average_head_on_a_uniform_map():
    torch.manual_seed(0)
    head = PresenceHead(5, 3, regions=True)
    torch.nn.init.normal_(head.weight)
    head.mean.normal_()
    head.scale.uniform_(0.5, 2.0)
    maps = torch.randn(2, 5, 3, 4)
    with torch.no_grad():
        got = head(maps)
        for n in range(2):                                   # explicit loop over the 12 regions
            region_logits = [((maps[n, :, i, j] - head.mean) / head.scale) @ head.weight.T + head.bias
                             for i in range(3) for j in range(4)]
            expected = torch.log(torch.stack([torch.exp(z) for z in region_logits]).mean(0))
            assert torch.allclose(got[n], expected, atol=1e-5)
        # Where every region is the same, region pooling and the average head agree.
        uniform = maps[:, :, :1, :1].expand(2, 5, 3, 4)
        average = PresenceHead(5, 3)
        average.load_state_dict({**head.state_dict(), "regions": torch.tensor(0.0)})
        assert torch.allclose(head(uniform), average(uniform), atol=1e-5)
        assert torch.allclose(average(uniform), average(uniform.mean((2, 3))), atol=1e-6)
    with pytest.raises(ValueError, match="maps"):
        head(torch.randn(2, 5))


def test_a_head_fitted_on_maps_pools_regions_and_finds_an_item_the_average_dilutes():
    """Category 0 shows as one bright region in 16: the region head separates it better than the average head."""
    rng = np.random.default_rng(0)

    def maps(n):
        labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
        x = rng.normal(size=(n, 4, 4, 4)).astype(np.float32)
        where = rng.integers(0, 16, size=n)
        x[np.arange(n), 0, where // 4, where % 4] += 4.0 * labels[:, 0]
        return x, labels

    (train_x, train_y), (val_x, val_y) = maps(200), maps(200)
    region_head = fit_presence(train_x, train_y)
    average_head = fit_presence(train_x.mean((2, 3)), train_y)
    assert region_head.pools_regions and not average_head.pools_regions
    region = presence_scores(region_head, val_x, val_y, CATS)["per_category"]["easy"]["ap"]
    average = presence_scores(average_head, val_x.mean((2, 3)), val_y, CATS)["per_category"]["easy"]["ap"]
    assert region > average + 0.05


def test_a_confidence_bound_asks_for_more_than_the_point_estimate():
    head = fit_presence(*_scenes(0))
    val_x, val_y = _scenes(1)
    probs = probabilities(head, val_x)
    point = fit_thresholds(head, probs, val_y, CATS, confidence_z=0.0)["easy"]["threshold"]
    sure = fit_thresholds(head, probs, val_y, CATS, confidence_z=1.0)["easy"]["threshold"]
    assert point is not None and sure is not None and sure >= point
    said = probs[:, 0] >= sure
    k, n = val_y[said, 0].sum(), said.sum()
    # The Wilson lower bound is the smaller root of (k/n - q)^2 = z^2 q (1 - q) / n, z = 1: solved here by numpy.
    roots = np.roots([1 + 1 / n, -(2 * k / n + 1 / n), (k / n) ** 2])
    assert min(roots) >= 0.9 - 1e-9
    assert float(head.threshold[0]) == pytest.approx(sure)


def _maps(seed, n):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
    x = rng.normal(size=(n, 3, 2, 2)).astype(np.float32)
    x[:, 0, 0, 0] += 2.0 * labels[:, 0]
    return x, labels


def test_fitting_on_standardised_regions_once_equals_training_the_head_through_its_forward():
    x, y = _maps(0, 40)
    fast = fit_presence(x, y, steps=25)
    slow = PresenceHead(3, 2, regions=True)                 # the plain loop: standardise inside every forward
    slow.mean.copy_(fast.mean)
    slow.scale.copy_(fast.scale)
    optimizer = torch.optim.AdamW(slow.parameters(), lr=presence.LR, weight_decay=presence.WEIGHT_DECAY)
    with torch.enable_grad():
        for _ in range(25):
            optimizer.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(slow(torch.from_numpy(x)),
                                                                 torch.from_numpy(y)).backward()
            optimizer.step()
    assert torch.allclose(fast.weight, slow.weight, atol=1e-5) and torch.allclose(fast.bias, slow.bias, atol=1e-5)
    assert fast.weight.abs().max() > 0.01                   # it learned something


def _head_fitted_alone(x: np.ndarray, y: np.ndarray, steps: int) -> PresenceHead:
    """The oracle: one head, its standardisation from its own rows' regions, trained through its forward."""
    head = PresenceHead(x.shape[1], y.shape[1], regions=x.ndim == 4)
    per_channel = torch.from_numpy(x).transpose(0, 1).flatten(1)
    head.mean.copy_(per_channel.mean(1))
    head.scale.copy_(per_channel.std(1, unbiased=False).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(head.parameters(), lr=presence.LR, weight_decay=presence.WEIGHT_DECAY)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(head(torch.from_numpy(x)),
                                                                 torch.from_numpy(y)).backward()
            optimizer.step()
    return head.eval()


@pytest.mark.parametrize("shape", ["maps", "pooled"])
def test_heads_fitted_together_equal_each_head_fitted_alone_on_its_rows(shape):
    x, y = _maps(0, 40)
    x[:, 1] += 5.0                                          # a channel far from zero: the affine fold must hold
    x = x if shape == "maps" else x.mean((2, 3))
    subsets = [np.ones(40, bool), np.arange(40) % 3 != 0, np.arange(40) < 25]
    together = fit_presence_heads(x, y, subsets, steps=25)
    for mask, got in zip(subsets, together, strict=True):
        alone = _head_fitted_alone(x[mask], y[mask], steps=25)
        assert got.pools_regions == (shape == "maps")
        for name in ("mean", "scale", "weight", "bias"):
            assert torch.allclose(getattr(got, name), getattr(alone, name), atol=2e-5, rtol=1e-5), name
        assert np.allclose(probabilities(got, x), probabilities(alone, x), atol=1e-5)
    assert not torch.allclose(together[1].weight, together[2].weight, atol=1e-3)   # each learned from its own rows


def test_a_subset_without_rows_is_refused():
    x, y = _maps(0, 10)
    with pytest.raises(ValueError, match="at least one row"):
        fit_presence_heads(x, y, [np.ones(10, bool), np.zeros(10, bool)], steps=2)


def test_the_main_head_fitted_beside_the_folds_is_the_head_fitted_on_every_row():
    x, y = _maps(0, 30)
    extra_x, extra_y = _maps(1, 45)
    ids = [f"s{i}" for i in range(30)]
    extra_ids = [ids[i % 30] for i in range(45)]
    head, out_of_fold = fit_with_cross_fitting(x, y, ids, extra_x, extra_y, extra_ids, folds=3, steps=20)
    alone = fit_presence(np.concatenate([x, extra_x]), np.concatenate([y, extra_y]), steps=20)
    assert np.allclose(probabilities(head, x), probabilities(alone, x), atol=1e-6)
    assert np.array_equal(out_of_fold, cross_fitted(x, y, ids, extra_x, extra_y, extra_ids, folds=3, steps=20))


def test_cross_fitting_gives_each_scene_the_probability_of_a_head_that_never_saw_it():
    x, y = _maps(0, 30)
    extra_x, extra_y = _maps(1, 45)
    ids = [f"s{i}" for i in range(30)]
    extra_ids = [ids[i % 30] for i in range(45)]            # masked views of the same scenes
    got = cross_fitted(x, y, ids, extra_x, extra_y, extra_ids, folds=3, steps=20)
    folds, extra_folds = scene_folds(ids, 3), scene_folds(extra_ids, 3)
    assert set(folds.tolist()) == {0, 1, 2} and np.array_equal(folds, scene_folds(ids, 3))
    for f in range(3):                                      # oracle: fit each fold's head by hand
        keep, keep_extra = folds != f, extra_folds != f
        head = fit_presence(np.concatenate([x[keep], extra_x[keep_extra]]),
                            np.concatenate([y[keep], extra_y[keep_extra]]), steps=20)
        assert np.allclose(got[~keep], probabilities(head, x[~keep]), atol=1e-6)
    # A scene's own labels (and its masked views') never reach its probability.
    flipped, flipped_extra = y.copy(), extra_y.copy()
    flipped[0], flipped_extra[np.array(extra_ids) == "s0"] = 1 - y[0], 1 - extra_y[np.array(extra_ids) == "s0"]
    again = cross_fitted(x, flipped, ids, extra_x, flipped_extra, extra_ids, folds=3, steps=20)
    assert np.allclose(again[0], got[0], atol=1e-6) and not np.allclose(again, got, atol=1e-6)


def test_one_training_scene_cannot_be_cross_fitted_and_is_left_out_rather_than_scored_by_an_empty_head():
    x, y = _maps(0, 1)
    got = cross_fitted(x, y, ["only"], x[:0], y[:0], [], folds=5, steps=5)
    assert got.shape == (1, 2) and np.isnan(got).all()
