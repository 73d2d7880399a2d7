"""Scene plans and distractors: ids, layouts inside the picture, and the style statistics the sample relies on."""
import re

import numpy as np
import pytest

from jobs.data.sample.plans import plan_distractor, plan_scene
from jobs.data.sample.styles import PATTERNS


def test_plans_are_seeded_and_ids_look_like_stl_signatures():
    a, b = plan_scene(7, 3, 8), plan_scene(7, 3, 8)
    assert a == b and plan_scene(8, 3, 8) != a
    assert re.fullmatch(r"[0-9a-f]{32}", a.scene_id)
    assert len({p.product_id for p in a.items}) == len(a.items)
    assert plan_distractor(7, 0, 8) == plan_distractor(7, 0, 8) != plan_distractor(7, 1, 8)
    assert plan_distractor(7, 5, 8).scene_index is None and plan_distractor(7, 5, 8).item.category == 5


@pytest.mark.parametrize("n_categories", [3, 8, 14])
def test_items_have_distinct_categories_and_centres_inside_the_picture(n_categories):
    for index in range(40):
        plan = plan_scene(0, index, n_categories)
        cats = [p.item.category for p in plan.items]
        assert 3 <= len(cats) <= min(5, n_categories) and len(set(cats)) == len(cats)
        assert all(0 <= c < n_categories for c in cats)
        for placed in plan.items:   # a target box may spill over the edge; the pair box is clipped later
            left, top, right, bottom = placed.box
            assert left < right and top < bottom
            assert 0 < (left + right) / 2 < 1 and 0 < (top + bottom) / 2 < 1


def test_style_statistics_of_the_plans():
    """Looks bind their items, zones bind them more, and distractors follow the in-scene distribution."""
    def dist(a, b):
        return np.abs(np.subtract(a.colors[0], b.colors[0])).sum()

    plans = [plan_scene(0, index, 8) for index in range(200)]
    same_zone, cross_zone = [], []
    for plan in plans:
        for i, a in enumerate(plan.items):
            for b in plan.items[i + 1:]:
                (same_zone if a.zone == b.zone else cross_zone).append(dist(a.item, b.item))
                if a.zone == b.zone:
                    assert a.item.pattern == b.item.pattern
    items = [placed.item for plan in plans for placed in plan.items]
    distractors = [plan_distractor(0, j, 8).item for j in range(len(items))]
    rng = np.random.default_rng(0)
    i, j = rng.integers(len(items), size=(2, 1000))
    random_pairs = np.mean([dist(items[a], items[b]) for a, b in zip(i, j, strict=True)])
    vs_distractors = np.mean([dist(items[a], distractors[b]) for a, b in zip(i, j, strict=True)])
    assert np.mean(same_zone) < 0.6 * np.mean(cross_zone) < 0.6 * random_pairs
    assert abs(vs_distractors - random_pairs) < 0.1 * random_pairs
    assert {d.pattern for d in distractors} == {it.pattern for it in items} == set(PATTERNS)
    assert np.std([d.colors[0] for d in distractors]) == pytest.approx(np.std([it.colors[0] for it in items]), rel=0.1)
