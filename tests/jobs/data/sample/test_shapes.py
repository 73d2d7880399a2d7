"""Category silhouettes: one per category, drawn inside their box, shaped by their parameters."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from jobs.data.sample.shapes import CATEGORIES, SHAPES


def draw(name: str, p, width: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """The body and detail-part masks of a shape drawn at `width` px."""
    shape = SHAPES[name]
    w, h = width, max(8, round(width / shape.aspect))
    body, part = Image.new("L", (w, h)), Image.new("L", (w, h))
    shape.draw(ImageDraw.Draw(body), ImageDraw.Draw(part), lambda x, y: (x * (w - 1), y * (h - 1)), p, w, h)
    return np.asarray(body) > 0, np.asarray(part) > 0


def test_every_category_has_a_shape():
    assert [name for name, _ in CATEGORIES] == list(SHAPES)
    assert all(path.endswith(name) or "|" in path for name, path in CATEGORIES)


@pytest.mark.parametrize("name", list(SHAPES))
def test_a_shape_covers_a_fair_part_of_its_box_and_follows_its_parameters(name):
    drawn = [draw(name, (a, a, a, a)) for a in (0.05, 0.95)]
    for body, part in drawn:
        mask = body | part
        assert 0.1 < mask.mean() < 0.95, mask.mean()
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert rows.max() - rows.min() > 0.5 * mask.shape[0] and cols.max() - cols.min() > 0.5 * mask.shape[1]
    (body0, part0), (body1, part1) = drawn
    assert (body0 != body1).any() or (part0 != part1).any()   # a watch's parameter turns its hand only
