"""STL ingestion: rejects with line numbers, the manifests' layout, and the real category files."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from jobs.cli import data, main
from jobs.data.stl_ingest import ingest_stl, stl_image_url
from tests.jobs.data.cli_output import one_line_error
from tests.jobs.data.stl_lines import CATS, EXPECTED_REJECTS, LINES, P1, P3, P_NOCAT, S1, S2, pair, sig

SHARED_STL = Path(__file__).resolve().parents[4] / "shared/data/stl"


@pytest.fixture
def stl_files(tmp_path):
    (tmp_path / "pairs.json").write_text("\n".join(LINES) + "\n")
    (tmp_path / "cat.json").write_text(json.dumps(CATS))
    return tmp_path / "pairs.json", tmp_path / "cat.json"


def test_rejects_carry_line_numbers_and_reasons(stl_files, tmp_path):
    result = ingest_stl(*stl_files, tmp_path / "out")
    assert [(r.line, r.reason) for r in result.rejects] == EXPECTED_REJECTS
    assert "line 1" in result.rejects[-1].detail
    assert result.items == 15 and result.pairs == 3 and result.scenes == 2 and result.products == 4
    written = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in written] == EXPECTED_REJECTS


def test_manifest_layout(stl_files, tmp_path):
    out = tmp_path / "out"
    ingest_stl(*stl_files, out)
    pairs = pq.read_table(out / "pairs.parquet").to_pylist()
    assert [(p["line"], p["scene_id"], p["product_id"]) for p in pairs] == [(1, S1, P1), (15, S2, P1), (16, S2, P3)]
    assert [pairs[1][k] for k in ("left", "top", "right", "bottom")] == [0.0, 0.0, 1.0, 1.0]
    assert pairs[0]["category"] == "Apparel & Accessories|Shoes"
    assert pairs[0]["right"] == pytest.approx(0.5)

    scenes = {r["scene_id"]: r for r in pq.read_table(out / "scenes.parquet").to_pylist()}
    assert scenes[S1]["image_url"] == f"http://i.pinimg.com/400x/{S1[:2]}/{S1[2:4]}/{S1[4:6]}/{S1}.jpg"
    assert scenes[S1]["n_products"] == 1 and scenes[S2]["n_products"] == 2 and scenes[S1]["image_path"] is None

    products = {r["product_id"]: r for r in pq.read_table(out / "products.parquet").to_pylist()}
    assert set(products) == set(CATS)             # the whole categorised catalogue, in pairs or not
    assert products[P1]["n_scenes"] == 2 and products[sig("unused")]["n_scenes"] == 0
    assert products[P3]["image_url"] == stl_image_url(P3)

    catalog = pq.read_table(out / "catalog.parquet")  # nothing local before `ctl data fetch`
    assert len(catalog) == 0 and catalog.column_names[:3] == ["product_id", "image_path", "category"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected"] == {"malformed": 6, "bbox_out_of_range": 2, "bbox_inverted": 2,
                                   "uncategorised": 1, "duplicate": 1}
    assert summary["categories"]["Apparel & Accessories|Shoes"] == {
        "products": 2, "products_in_pairs": 1, "pairs": 2, "scenes": 2}
    assert summary["categories"]["Apparel & Accessories|Jewelry|Earrings"]["pairs"] == 0
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_data_commands_are_registered():
    ctx = click.Context(data)
    assert {"stl", "fetch", "catalog"} <= set(data.list_commands(ctx))
    assert data.get_command(ctx, "stl").name == "stl"


def test_cli_reports_rejects_and_summary(stl_files, tmp_path):
    res = CliRunner().invoke(main, ["data", "stl", "--pairs", str(stl_files[0]), "--categories", str(stl_files[1]),
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert f"{stl_files[0]}:6: bbox_out_of_range" in res.output
    assert f"{stl_files[0]}:12: uncategorised: product {P_NOCAT} has no category" in res.output
    assert "and 2 more in" in res.output
    assert "Apparel & Accessories|Clothing|Pants" in res.output and "3 pairs kept" in res.output


@pytest.mark.parametrize("cats, message", [
    ("[1, 2]", "expected a JSON object"),
    ("{oops", "not valid JSON"),
    (json.dumps({P1: ""}), "empty or non-string category"),
])
def test_cli_bad_category_file_is_one_readable_line(stl_files, tmp_path, cats, message):
    stl_files[1].write_text(cats)
    res = CliRunner().invoke(main, ["data", "stl", "--pairs", str(stl_files[0]), "--categories", str(stl_files[1]),
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and one_line_error(res).startswith(f"ctl data stl: error: {stl_files[1]}: ")
    assert message in res.stderr
    assert not (tmp_path / "out").exists()


def test_cli_no_valid_pair_and_missing_file(tmp_path):
    (tmp_path / "pairs.json").write_text("not json\n")
    (tmp_path / "cat.json").write_text(json.dumps(CATS))
    args = ["data", "stl", "--categories", str(tmp_path / "cat.json"), "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(main, args + ["--pairs", str(tmp_path / "pairs.json")])
    assert res.exit_code == 2 and "no valid pair" in one_line_error(res) and "line 1" in res.stderr
    res = CliRunner().invoke(main, args + ["--pairs", str(tmp_path / "absent.json")])
    assert res.exit_code == 2 and "does not exist" in one_line_error(res)


def test_cli_binary_pair_file_names_the_file_and_line(stl_files, tmp_path):
    binary = tmp_path / "pairs.bin"
    binary.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)))
    res = CliRunner().invoke(main, ["data", "stl", "--pairs", str(binary), "--categories", str(stl_files[1]),
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert one_line_error(res) == (f"ctl data stl: error: {binary}: line 1, column 2: not UTF-8 text (byte 0x8b); "
                                   "expected a JSON text file")
    assert not (tmp_path / "out").exists()


def generated_pairs(categories: dict[str, str], n: int, seed: int = 0) -> list[str]:
    """n STL-style pair lines over the real product signatures, a few scenes per product."""
    rng = random.Random(seed)
    products = sorted(categories)
    scenes = [sig(("scene", i)) for i in range(n * 2 // 3)]
    lines = []
    for i in range(n):
        left, top = rng.uniform(0, 0.6), rng.uniform(0, 0.6)
        box = [round(left, 4), round(top, 4), round(left + rng.uniform(0.05, 0.4), 4),
               round(top + rng.uniform(0.05, 0.4), 4)]
        lines.append(pair(scenes[i % len(scenes)], products[(i * 7919) % len(products)], box))
    return lines


@pytest.mark.parametrize("name, n_products, n_categories", [
    ("fashion-cat.json", 38111, 10),
    pytest.param("home-cat.json", 41306, 11, marks=pytest.mark.slow),
])
def test_real_category_files_with_72000_generated_pairs(tmp_path, name, n_products, n_categories):
    cat_file = SHARED_STL / name
    if not cat_file.exists():
        pytest.skip(f"{cat_file} is not present")
    categories = json.loads(cat_file.read_text())
    lines = generated_pairs(categories, 72000)
    lines[100] = lines[100].replace('"bbox": [', '"bbox": [2, ')      # five numbers -> malformed
    lines[200] = pair(sig("s"), sig("not in the category file"), [0.1, 0.1, 0.2, 0.2])
    (tmp_path / "pairs.json").write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    result = ingest_stl(tmp_path / "pairs.json", cat_file, tmp_path / "out")
    seconds = time.perf_counter() - t0
    assert result.products == n_products and len(result.per_category) == n_categories
    assert [(r.line, r.reason) for r in result.rejects] == [(101, "malformed"), (201, "uncategorised")]
    assert result.pairs == 71998 and pq.read_metadata(tmp_path / "out" / "pairs.parquet").num_rows == 71998
    assert sum(c["pairs"] for c in result.per_category.values()) == 71998
    assert sum(c["products"] for c in result.per_category.values()) == n_products
    assert seconds < 30, f"ingestion took {seconds:.1f} s"   # about 3 s on 2 shared cores
