"""embed-catalog --incremental and ctl update-index, end to end on real images: only changes are embedded,
the result equals a full run, and the updated index never returns a removed product (ProductIndex, Retriever)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from index.build import build_index
from index.embedding_shards import DELTA
from index.layout import IndexInfo
from index.store import ProductIndex
from jobs.catalog.update_index import update_index_command
from jobs.cli import main as ctl
from pipeline.checkpoint import load_checkpoint
from retrieval.retriever import Retriever
from tests.jobs.catalog.catalogs import (
    CATEGORIES,
    assert_one_line_error,
    embeddings_of,
    new_checkpoint,
    read_shards,
    run,
    write_jpeg,
    write_manifest,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"n_eval_queries": 50, "n_tune_queries": 50}


def _catalogue(root, n=20):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        write_jpeg(root / "img" / f"{i}.jpg", rng)
        rows.append((f"p{i:04d}", f"img/{i}.jpg", CATEGORIES[i % 2]))
    return rows


def test_incremental_embeds_only_the_changes_and_equals_a_full_run(tmp_path, ckpt):
    root = tmp_path / "cat"
    rows = _catalogue(root)
    first = write_manifest(root, rows)
    base = tmp_path / "emb1"
    run(first, ckpt, base, shard_size=8)
    # the next day: p0003 gone, p0005's image replaced, p0007 recategorised, p0100 new
    rng = np.random.default_rng(7)
    write_jpeg(root / "img" / "5.jpg", rng)
    write_jpeg(root / "img" / "new.jpg", rng)
    rows2 = [r for r in rows if r[0] != "p0003"]
    rows2 = [(p, path, "shoes" if p == "p0007" else c) for p, path, c in rows2] + [("p0100", "img/new.jpg", "bags")]
    (root / "v2").mkdir()
    for i, (p, path, c) in enumerate(rows2):
        rows2[i] = (p, str(root / path), c)
    second = write_manifest(root / "v2", rows2)

    out = tmp_path / "emb2"
    summary = run(second, ckpt, out, shard_size=8, base=base)
    inc = summary["incremental"]
    assert (inc["reembedded"], inc["added"], inc["changed"], inc["removed"]) == (2, 1, 2, 1)
    assert summary["processed"] == 2 and summary["embedded"] == 20
    delta = pq.read_table(out / DELTA).to_pydict()
    assert sorted(zip(delta["product_id"], delta["change"], strict=True)) == [
        ("p0003", "removed"), ("p0005", "changed"), ("p0007", "changed"), ("p0100", "added")]
    full = tmp_path / "full"
    run(second, ckpt, full, shard_size=8)
    a, b = read_shards(out), read_shards(full)
    assert a.drop_columns(["embedding"]).equals(b.drop_columns(["embedding"]))
    np.testing.assert_allclose(embeddings_of(a), embeddings_of(b), atol=1e-5)
    assert run(second, ckpt, out, shard_size=8, base=base)["noop"]

    # the index: built from the first folder, updated with the second
    idx = tmp_path / "idx"
    build_index(base, idx, **FAST)
    result = CliRunner().invoke(ctl, ["update-index", "--index-dir", str(idx), "--embeddings", str(out)])
    assert result.exit_code == 0, result.output
    assert "v000001 -> v000002: 3 added or replaced" in result.output and "rebuild" in result.output
    index = ProductIndex.load(idx)
    assert sorted(index.product_ids) == sorted(r[0] for r in rows2)
    assert index.table.column("category").to_pylist()[list(index.product_ids).index("p0007")] == "shoes"
    retriever = Retriever(load_checkpoint(ckpt), index)
    hits = retriever.retrieve(root / "img" / "3.jpg", k=index.n, candidates=index.n).hits
    returned = {h.product_id for h in hits}
    assert "p0003" not in returned and "p0100" in returned and len(returned) == 20
    for category in CATEGORIES:
        hits = retriever.retrieve(root / "img" / "3.jpg", k=index.n, candidates=index.n, category=category).hits
        assert "p0003" not in {h.product_id for h in hits}


def test_incremental_flags_and_update_index_errors(tmp_path, ckpt):
    runner = CliRunner()
    rows = _catalogue(tmp_path / "cat", 4)
    manifest = write_manifest(tmp_path / "cat", rows)
    args = ["--manifest", str(manifest), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--quiet",
            "--workers", "0", "--image-size", "32"]
    assert_one_line_error(runner.invoke(ctl, ["embed-catalog", *args, "--incremental"]), "--base",
                          prefix="ctl")
    run(manifest, ckpt, tmp_path / "o")
    assert_one_line_error(runner.invoke(ctl, ["embed-catalog", *args, "--incremental", "--base", str(tmp_path / "o")]),
                          "same folder", prefix="ctl embed-catalog")
    assert_one_line_error(runner.invoke(update_index_command, ["--index-dir", str(tmp_path / "none"),
                                                                "--remove", "p0001"]),
                           "does not exist", prefix="update-index")
    build_index(tmp_path / "o", tmp_path / "idx", **FAST)
    assert_one_line_error(runner.invoke(update_index_command, ["--index-dir", str(tmp_path / "idx")]),
                          "nothing to apply; give --embeddings and/or --remove", prefix="update-index")
    result = runner.invoke(update_index_command, ["--index-dir", str(tmp_path / "idx"), "--remove", "p0001,p0002"])
    assert result.exit_code == 0, result.output
    assert ProductIndex.load(tmp_path / "idx").n == 2 and "a full rebuild is due" in result.output
    info = IndexInfo.read(tmp_path / "idx" / "v000002")
    assert info.update.dropped == 2


@pytest.mark.parametrize("engine", ["local"])
def test_a_base_from_another_checkpoint_is_refused(tmp_path, ckpt, engine):
    rows = _catalogue(tmp_path / "cat", 3)
    manifest = write_manifest(tmp_path / "cat", rows)
    other = new_checkpoint(tmp_path / "other.pt", seed=5)
    run(manifest, other, tmp_path / "base")
    with pytest.raises(Exception, match="another checkpoint"):
        run(manifest, ckpt, tmp_path / "new", base=tmp_path / "base", engine=engine)
