"""`ctl-retrieve` through click's runner: table, JSON, category filter, sheet, and every user error."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from common import defaults
from jobs.retrieve_cli import main
from pipeline.images import load_scene
from tests.helpers import photo
from tests.retrieval.world import CATEGORIES, PER_CATEGORY, PLATT


def run(world, *args, checkpoint=None, index_dir=None):
    argv = ["--checkpoint", str(checkpoint or world.checkpoint),
            "--index-dir", str(index_dir or world.index_dir), *args]
    return CliRunner().invoke(main, argv)


def assert_one_line_error(result, *fragments, code=None):
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    if code is not None:
        assert result.exit_code == code
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ctl-retrieve: error:")
    for fragment in fragments:
        assert fragment in err, err
    assert result.stdout == ""


def test_table(world):
    result = run(world, "--scene", str(world.scenes[0]), "--k", "5")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert "top 5 of 21 products" in lines[0]
    assert lines[1].split() == ["rank", "product", "category", "score", "d_g", "d_l"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(r[1] in world.product_ids and r[2] in CATEGORIES for r in rows)
    scores = [float(r[3]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_json(world):
    result = run(world, "--scene", str(world.scenes[1]), "--k", "4", "--format", "json", "--candidates", "10")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 4
    for rank, hit in enumerate(hits, start=1):
        assert {"rank", "product_id", "category", "score", "global_distance", "local_distance", "image"} <= set(hit)
        assert hit["rank"] == rank
        assert hit["score"] == pytest.approx(1 - (hit["global_distance"] + hit["local_distance"]) / 4, abs=1e-6)


@pytest.mark.parametrize("exact", [False, True])
def test_a_phone_size_jpeg_is_decoded_as_load_scene_decodes_it(world, retriever, tmp_path, exact):
    scene = tmp_path / "phone.jpg"
    scene.write_bytes(photo(2000, 1840))
    result = run(world, "--scene", str(scene), "--k", "5", "--format", "json", *(["--exact-decode"] if exact else []))
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    for way in (exact, not exact):
        want = retriever.retrieve(load_scene(scene, retriever.input_size, exact=way), k=5)
        same = [h["product_id"] for h in got] == [h.product_id for h in want.hits] and \
            [h["global_distance"] for h in got] == pytest.approx([h.global_distance for h in want.hits], abs=1e-6)
        assert same is (way == exact)      # the answer of this decode, and not of the other one


def test_stage1_global_reranks_the_global_candidates_and_hybrid_the_hybrids_own(world, retriever, global_retriever,
                                                                              scenes):
    # with 3 candidates the two stage 1s disagree on this scene; each CLI answer is its own retriever's
    want = {stage1: [h.product_id for h in r.retrieve(scenes[0], k=3, candidates=3).hits]
            for stage1, r in (("hybrid", retriever), ("global", global_retriever))}
    assert want["hybrid"] != want["global"]
    for stage1 in want:
        result = run(world, "--scene", str(world.scenes[0]), "--k", "3", "--candidates", "3", "--format", "json",
                     "--stage1", stage1)
        assert result.exit_code == 0, result.output
        assert [hit["product_id"] for hit in json.loads(result.stdout)] == want[stage1]


def test_category(world):
    result = run(world, "--scene", str(world.scenes[0]), "--k", "50", "--format", "json", "--category", "hat")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == PER_CATEGORY and {h["category"] for h in hits} == {"hat"}


def test_unknown_category_lists_known_ones(world):
    result = run(world, "--scene", str(world.scenes[0]), "--category", "scarf")
    assert_one_line_error(result, "scarf", *CATEGORIES)


def test_sheet(world, tmp_path):
    out = tmp_path / "sheet.png"
    result = run(world, "--scene", str(world.scenes[0]), "--k", "6", "--sheet", str(out))
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 300


# -- errors --------------------------------------------------------------------------------------

@pytest.fixture
def bad_images(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {"text": text, "good": good, "truncated": truncated, "folder": tmp_path}


@pytest.mark.parametrize("case, fragment", [
    ("missing", "no such file"),
    ("folder", "is a folder"),
    ("text", "not an image"),
    ("truncated", "truncated"),
])
def test_bad_scene(world, bad_images, tmp_path, case, fragment):
    scene = tmp_path / "absent.jpg" if case == "missing" else bad_images[case]
    assert_one_line_error(run(world, "--scene", str(scene)), fragment, code=2)


def test_decompression_bomb(world, bad_images, monkeypatch):
    monkeypatch.setattr("pipeline.images.MAX_IMAGE_PIXELS", 10_000)
    assert_one_line_error(run(world, "--scene", str(bad_images["good"])), "pixel limit", code=2)


@pytest.mark.parametrize("args, fragment", [
    (["--k", "0"], "'--k': 0 is not in the range x>=1"),
    (["--k", "-3"], "'--k': -3 is not in the range x>=1"),
    (["--k", "many"], "'many' is not a valid integer"),
    (["--candidates", "0"], "'--candidates': 0 is not in the range x>=1"),
    (["--format", "xml"], "'xml' is not one of"),
    (["--stage1", "local"], "'local' is not one of 'hybrid', 'global'"),
    (["--device", "tpu"], "'--device': must be cpu, cuda or cuda:N"),
    (["--bogus"], "No such option '--bogus'"),
])
def test_bad_arguments(world, args, fragment):
    assert_one_line_error(run(world, "--scene", str(world.scenes[0]), *args), fragment, code=2)


def test_scene_is_required(world):
    assert_one_line_error(run(world), "Missing option '--scene'", code=2)


def test_missing_index(world, tmp_path):
    result = run(world, "--scene", str(world.scenes[0]), index_dir=tmp_path / "nowhere")
    assert_one_line_error(result, "does not exist", "build-index", code=1)


def test_missing_checkpoint(world, tmp_path):
    result = run(world, "--scene", str(world.scenes[0]), checkpoint=tmp_path / "none.pt")
    assert_one_line_error(result, "no checkpoint", code=1)


def test_index_from_another_checkpoint(world, tmp_path):
    other = world.other_checkpoint(tmp_path / "other.pt")
    result = run(world, "--scene", str(world.scenes[0]), checkpoint=other)
    assert_one_line_error(result, "was built from checkpoint sha256", "re-embed", code=1)


@pytest.mark.parametrize("content", [b'{"not": "a checkpoint"}', b"", b"PK\x03\x04 broken zip"])
def test_a_file_that_is_not_a_checkpoint_is_named_as_such(world, tmp_path, content):
    bogus = tmp_path / "some.json"
    bogus.write_bytes(content)
    result = run(world, "--scene", str(world.scenes[0]), checkpoint=bogus)
    assert_one_line_error(result, "is not a readable checkpoint", "checkpoint.pt", code=1)
    assert "re-embed" not in result.stderr and "different checkpoint" not in result.stderr


def test_a_one_pixel_scene_is_a_scene(world, tmp_path):
    scene = tmp_path / "pixel.png"
    Image.new("RGB", (1, 1), (200, 30, 40)).save(scene)
    result = run(world, "--scene", str(scene), "--k", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [h["rank"] for h in json.loads(result.stdout)] == [1, 2, 3]


def test_help_is_fast_and_clean():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "--candidates" in result.output


# -- the whole look, and does a product complete the scene ---------------------------------------

def run_presence(world, presence_paths, *args):
    ckpt, index_dir = presence_paths
    return run(world, *args, checkpoint=ckpt, index_dir=index_dir)


def test_look_table_groups_the_missing_categories(world, presence_paths):
    result = run_presence(world, presence_paths, "--scene", str(world.scenes[0]), "--look", "--k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # the candidates each category's stage 1 pulled: k + the margin on the world's exact index, capped at its size
    assert "the whole look, the best 3 of each of 1 category missing from the scene " \
           f"(up to {min(3 + max(3, defaults.CANDIDATES_EXACT_MARGIN), PER_CATEGORY)} candidates each" in lines[0]
    assert lines[1].startswith("left out, already in the scene: hat (p=0.52), shoes (p=0.95)")
    block = lines.index("handbag  (missing: p(in scene)=0.05)")
    assert lines[block + 1].split() == ["rank", "product", "score", "d_g", "d_l"]
    assert [line.split()[0] for line in lines[block + 2:block + 5]] == ["1", "2", "3"]
    full = run_presence(world, presence_paths, "--scene", str(world.scenes[0]), "--look", "--include-present")
    headers = [line for line in full.stdout.splitlines() if line.startswith(tuple(CATEGORIES))]
    assert [h.split()[0] for h in headers] == ["handbag", "hat", "shoes"]          # missing first
    assert "already in the scene" in headers[1] and len(full.stdout.splitlines()) == 1 + 3 * (3 + 4)


def test_look_json_has_exactly_the_documented_shape(world, presence_paths):
    result = run_presence(world, presence_paths, "--scene", str(world.scenes[1]), "--look", "--include-present",
                          "--k", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"scene", "categories"} and data["scene"] == str(world.scenes[1])
    assert [c["category"] for c in data["categories"]] == ["handbag", "hat", "shoes"]
    for c in data["categories"]:
        assert set(c) == {"category", "present", "presence_probability", "attention", "hits"}
        assert len(c["attention"]) == 7 and sum(map(sum, c["attention"])) == pytest.approx(1.0, abs=1e-4)
        assert len(c["hits"]) == 2 and {h["category"] for h in c["hits"]} == {c["category"]}
        assert set(c["hits"][0]) == {"rank", "product_id", "category", "score", "hybrid_distance",
                                     "global_distance", "local_distance", "image", "metadata"}


def test_look_with_an_old_checkpoint_shows_every_category_and_notes_why(world):
    result = run(world, "--scene", str(world.scenes[0]), "--look", "--k", "2")
    assert result.exit_code == 0, result.output
    assert "note: " in result.stderr and "no category-presence head" in result.stderr
    assert "this checkpoint has no presence head: every category is shown" in result.stdout
    assert sum(line in CATEGORIES for line in result.stdout.splitlines()) == 3


def test_look_sheet_has_one_row_per_category(world, presence_paths, tmp_path):
    out = tmp_path / "look.png"
    result = run_presence(world, presence_paths, "--scene", str(world.scenes[0]), "--look", "--include-present",
                          "--sheet", str(out))
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.format == "PNG" and img.height > 3 * 160 and img.width > 4 * 160


def test_product_verdicts_as_table_and_json(world, presence_paths):
    ids = world.product_ids[:3]
    argv = ["--scene", str(world.scenes[0]), *[a for pid in ids for a in ("--product", pid)]]
    table = run_presence(world, presence_paths, *argv)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert f"completes the look at p >= {PLATT.threshold:.3f}" in lines[0]
    assert lines[1].split() == ["product", "category", "score", "d_h", "d_g", "d_l", "p", "completes"]
    assert [line.split()[0] for line in lines[2:]] == ids
    assert all(line.split()[-1] in ("yes", "no") for line in lines[2:])
    data = json.loads(run_presence(world, presence_paths, *argv, "--format", "json").stdout)
    assert set(data) == {"scene", "threshold", "products"} and [p["product_id"] for p in data["products"]] == ids
    for row, line in zip(data["products"], lines[2:], strict=True):
        assert row["completes_look"] == (line.split()[-1] == "yes") == (row["probability"] >= data["threshold"])


def test_product_without_a_calibration_prints_distances_and_a_note(world):
    result = run(world, "--scene", str(world.scenes[0]), "--product", world.product_ids[0])
    assert result.exit_code == 0, result.output
    assert "no calibration for this checkpoint" in result.stdout and result.stdout.splitlines()[2].endswith("-")
    assert "note: no probability for 'completes the look'" in result.stderr


def test_unknown_product_id_is_a_one_line_error(world, presence_paths):
    result = run_presence(world, presence_paths, "--scene", str(world.scenes[0]), "--product", "nope")
    assert_one_line_error(result, "unknown product id 'nope'", code=2)


@pytest.mark.parametrize("args, fragment", [
    (["--look", "--category", "hat"], "--look gives every category missing from the scene; --category asks for one"),
    (["--look", "--product", "p000"], "--look and --product ask different questions"),
    (["--product", "p000", "--category", "hat"], "--product scores the products given; --category does not apply"),
    (["--product", "p000", "--k", "3", "--sheet", "x.png"], "--k, --sheet do not apply"),
    (["--include-present"], "--include-present only applies to --look"),
])
def test_bad_combinations_are_one_line_usage_errors(world, args, fragment):
    assert_one_line_error(run(world, "--scene", str(world.scenes[0]), *args), fragment, "see ctl-retrieve --help",
                          code=2)
