"""The sample contact sheet: a PNG sized by the scenes and products it shows; no pairs, a clear error."""
import pytest
from PIL import Image

from common.errors import ArtifactError
from jobs.data.layouts import SAMPLE_PAIRS
from jobs.data.sample.contact_sheet import render_contact_sheet


def test_contact_sheet_rows_follow_the_scenes(small, tmp_path):
    one = render_contact_sheet(small, tmp_path / "one.png", n=1, scene_px=128, thumb=64)
    three = render_contact_sheet(small, tmp_path / "three.png", n=3, scene_px=128, thumb=64)
    with Image.open(one) as a, Image.open(three) as b:
        assert a.format == b.format == "PNG" and a.mode == "P"      # quantised to 256 colours
        assert a.width == b.width == 128 + 4 * 8 + 3 * (64 + 8)
        assert b.height - a.height == 2 * (a.height - 22)            # a header, then one row per scene
    assert not list(tmp_path.glob(".*.tmp"))


def test_contact_sheet_without_pairs(small, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / SAMPLE_PAIRS).write_text("\n")
    (empty / "categories.json").write_text("{}")
    with pytest.raises(ArtifactError, match="no pairs in"):
        render_contact_sheet(empty, tmp_path / "x.png")
