"""Presence thresholds: fitted per category for precision of "present" on validation, then applied by the scores."""
import numpy as np
import pytest
import torch

from jobs.training.presence import fit_presence, fit_thresholds, presence_scores
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
    record = fit_thresholds(head, val_x, val_y, CATS, precision=0.9, min_present=3)
    with torch.no_grad():
        probs = torch.sigmoid(head(torch.from_numpy(val_x))).numpy()
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
