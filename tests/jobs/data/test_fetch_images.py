"""`ctl data fetch` on dataset dirs: STL and user catalogues through a mirror, reports, and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from common.errors import NothingProducedError
from jobs.cli import main
from jobs.data.catalog_manifest import ManifestError, read_catalog
from jobs.data.datasets import DatasetError, load_dataset
from jobs.data.fetch_images import fetch_command, fetch_dataset
from jobs.data.fetcher import FetchConfig
from jobs.data.stl_ingest import ingest_stl
from jobs.data.user_catalog import build_catalog
from tests.jobs.data.cli_output import one_line_error
from tests.jobs.data.files import leftovers
from tests.jobs.data.misbehaving_server import GOOD, OTHER, jpeg
from tests.jobs.data.stl_lines import sig


def test_ctl_data_fetch_stl_dir_end_to_end(server, tmp_path):
    """Ingest a small STL pair file, fetch through --base-url, and load the result for training."""
    products = {sig(i): ("Apparel|Shoes" if i % 2 else "Apparel|Bags") for i in range(6)}
    scenes = [sig(100 + i) for i in range(3)]
    lines = [json.dumps({"scene": scenes[i % 3], "product": p, "bbox": [0.1, 0.2, 0.5, 0.6]})
             for i, p in enumerate(products)]
    (tmp_path / "pairs.json").write_text("\n".join(lines) + "\n")
    (tmp_path / "cat.json").write_text(json.dumps(products))
    out = tmp_path / "stl"
    ingest_stl(tmp_path / "pairs.json", tmp_path / "cat.json", out)
    with pytest.raises(ManifestError, match="ctl data fetch"):
        read_catalog(out / "catalog.parquet")
    with pytest.raises(DatasetError, match="ctl data fetch"):
        load_dataset(out)

    dead = sig(5)
    for i, s in enumerate(list(products) + scenes):
        if s != dead:
            server.images[f"/400x/{s[:2]}/{s[2:4]}/{s[4:6]}/{s}.jpg"] = jpeg((i * 30 % 255, 60, 90))
    args = [str(out), "--base-url", server.url, "--timeout", "0.5", "--retries", "1",
            "--backoff", "0.01", "--rate", "0"]
    res = CliRunner().invoke(fetch_command, args)
    assert res.exit_code == 0, res.output
    assert "8 fetched" in res.output and "1 failed" in res.output

    report = json.loads((out / "fetch_report.json").read_text())
    assert report["reasons"] == {"http_404": 1} and report["failures"][0]["url"].endswith(f"{dead}.jpg")
    images = pq.read_table(out / "images.parquet").to_pylist()
    assert len(images) == 8 and all(not Path(r["image_path"]).is_absolute() for r in images)
    catalog = read_catalog(out / "catalog.parquet", check_files=True)
    assert sorted(catalog.column("product_id").to_pylist()) == sorted(set(products) - {dead})
    assert set(catalog.column_names) >= {"product_id", "image_path", "category", "image_url", "n_scenes"}

    ds = load_dataset(out)
    assert ds.layout == "stl" and len(ds.scenes) == 3 and len(ds.products) == 5
    assert len(ds.pairs) == 5 and ds.skipped == {"products without local image": 1, "pairs without local image": 1}
    assert all(p.image_path.is_file() for p in ds.products.values())
    assert leftovers(out) == []

    server.reset()
    res = CliRunner().invoke(main, ["data", "fetch", *args, "--strict"])
    assert res.exit_code == 1 and "1 failed (1 known from an earlier run, not asked again" in res.output
    assert res.stderr.strip().splitlines()[-1] == "ctl data fetch: error: 1 of 9 images could not be fetched"
    assert server.total() == 0  # the dead URL is remembered: no request at all
    report = json.loads((out / "fetch_report.json").read_text())
    assert report["remembered"] == 1 and report["failures"][0]["remembered"] is True

    res = CliRunner().invoke(main, ["data", "fetch", *args, "--retry-failed"])
    assert res.exit_code == 0 and server.total() == 1  # asked once more, a 404 is not retried within the run


def test_user_catalogue_with_image_urls(server, tmp_path):
    """`ctl data catalog` with an image_url column, then `ctl data fetch` through a mirror."""
    local = tmp_path / "local.jpg"
    local.write_bytes(OTHER)
    (tmp_path / "cat.csv").write_text(
        "product_id,image_path,image_url,category,brand\n"
        f"a,{local},,shoes,Acme\n"
        "b,,http://shop.example/good/b.jpg,bags,Bolt\n"
        "c,,http://shop.example/missing.jpg,bags,Bolt\n")
    out = tmp_path / "shop"
    build_catalog(tmp_path / "cat.csv", out)
    assert read_catalog(out).column("product_id").to_pylist() == ["a"]
    res = CliRunner().invoke(fetch_command, [str(out), "--base-url", server.url,
                                    "--timeout", "0.5", "--retries", "0", "--rate", "0"])
    assert res.exit_code == 0, res.output
    assert server.count("/good/b.jpg") == 1 and server.count("/missing.jpg") == 1
    rows = {r["product_id"]: r for r in read_catalog(out, check_files=True).to_pylist()}
    assert set(rows) == {"a", "b"} and rows["b"]["brand"] == "Bolt"
    assert Path(rows["b"]["image_path"]).read_bytes() == GOOD
    assert rows["b"]["image_url"] == "http://shop.example/good/b.jpg"


def test_nothing_fetched_is_one_line_and_exit_1_with_a_readable_report(server, tmp_path):
    pq.write_table(pa.table({"product_id": ["a", "b"], "category": ["x", "x"],
                             "image_url": [f"{server.url}/html.jpg", f"{server.url}/missing.jpg"]}),
                   tmp_path / "products.parquet")
    res = CliRunner().invoke(main, ["data", "fetch", str(tmp_path), "--retries", "0", "--rate", "0"])
    assert res.exit_code == 1
    assert one_line_error(res) == ("ctl data fetch: error: none of the 2 images could be fetched "
                                   f"(1 not_an_image, 1 http_404); details in {tmp_path / 'fetch_report.json'}")
    report = json.loads((tmp_path / "fetch_report.json").read_text())
    details = {f["reason"]: f["detail"] for f in report["failures"]}
    assert details["not_an_image"] == ("text/html, 33 bytes (UnidentifiedImageError: cannot identify image file; "
                                       "starts '<html><body>Sign in</body></html>')")
    assert " object at 0x" not in (tmp_path / "fetch_report.json").read_text()
    assert all(f["permanent"] for f in report["failures"])
    with pytest.raises(NothingProducedError):          # the library says so too, not only the command
        fetch_dataset(tmp_path, config=FetchConfig(retries=0, rate=0, trust_env=False))


@pytest.mark.parametrize("args, message", [
    (["--base-url", "ftp://mirror/x"], "ctl: error: Invalid value for '--base-url': must be an http(s) URL, "
                                       "got 'ftp://mirror/x' (see ctl data fetch --help)"),
    (["--workers", "0"], "ctl: error: Invalid value for '--workers': 0 is not in the range 1<=x<=256."),
])
def test_bad_arguments_are_one_line_usage_errors(tmp_path, args, message):
    res = CliRunner().invoke(main, ["data", "fetch", str(tmp_path), *args])
    assert res.exit_code == 2 and one_line_error(res).startswith(message), res.stderr


def test_a_dir_without_manifests_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["data", "fetch", str(tmp_path)])
    assert res.exit_code == 1
    assert one_line_error(res) == (f"ctl data fetch: error: {tmp_path}: no scenes.parquet or products.parquet with a "
                                   "'image_url' column (write them with `ctl data stl` or `ctl data catalog`)")
