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
