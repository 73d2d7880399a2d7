"""Row metadata on disk (format 2): memory-mapped, no Arrow memory at load; format 1 still loads, same answers."""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from index.build import build_index
from index.layout import CATEGORY_ROWS_FILE, LEGACY_IDS_FILE, IndexInfo, publish, row_files
from index.rows import copy_as_format, read_table
from index.store import IndexDirError, ProductIndex
from index.update import update_index
from tests.catalogue_vectors import CATEGORIES, clustered, write_embeddings

FAST = {"n_eval_queries": 100, "n_tune_queries": 50}
N, DIM = 4000, 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    xb, labels = clustered(N, DIM, n_clusters=30)
    cats = np.array([CATEGORIES[c % len(CATEGORIES)] for c in labels])
    emb_dir = write_embeddings(root / "emb", xb, cats)
    build_index(emb_dir, root / "idx", factory="IVF16,Flat", **FAST)
    old = root / "old"
    old.mkdir()
    copy_as_format(root / "idx" / "v000001", old / "v000001", 1)
    publish(old, old / "v000001")
    return {"xb": xb, "cats": cats, "new": root / "idx", "old": old, "emb": emb_dir}


def test_a_new_build_keeps_its_rows_in_memory_mapped_files(world):
    info = IndexInfo.read(world["new"] / "v000001")
    assert info.format_version == 2 and set(row_files(2)) <= set(info.files)
    assert not (world["new"] / "v000001" / LEGACY_IDS_FILE).exists()
    before = pa.total_allocated_bytes()
    index = ProductIndex.load(world["new"])
    assert pa.total_allocated_bytes() - before == 0          # the table's buffers are the mapped file
    for c in CATEGORIES:
        rows = index.rows_for_category(c)
        np.testing.assert_array_equal(rows, np.flatnonzero(world["cats"] == c))
        assert not rows.flags.writeable and isinstance(rows.base, np.memmap)
    assert index.table.column("product_id").to_pylist()[:2] == ["p000000", "p000001"]


def test_format_1_still_loads_and_answers_the_same(world):
    before = pa.total_allocated_bytes()
    old = ProductIndex.load(world["old"])
    assert IndexInfo.read(world["old"] / "v000001").format_version == 1
    assert pa.total_allocated_bytes() - before > 0            # format 1: the table is read into memory
    new = ProductIndex.load(world["new"])
    assert old.table.equals(new.table) and old.categories == new.categories
    xq = world["xb"][::50] + np.float32(0.01)
    for index in (old, new):
        index.exact_category_max_rows = 0                      # every category through the IVF filter
    np.testing.assert_array_equal(old.search(xq, 10)[1], new.search(xq, 10)[1])
    for c in CATEGORIES:
        np.testing.assert_array_equal(old.rows_for_category(c), new.rows_for_category(c))
        np.testing.assert_array_equal(old.search(xq, 10, category=c)[1], new.search(xq, 10, category=c)[1])


def test_an_update_of_a_format_1_index_writes_format_2(world, tmp_path):
    shutil.copytree(world["old"], tmp_path / "old")
    ids = read_table(world["old"] / "v000001", 1).column("product_id").to_pylist()
    info = update_index(tmp_path / "old", remove=ids[:10])
    assert info.format_version == 2 and info.n == N - 10
    index = ProductIndex.load(tmp_path / "old")
    assert index.version == "v000002" and ids[0] not in set(index.table.column("product_id").to_pylist())
    assert sum(len(index.rows_for_category(c)) for c in index.categories) == N - 10


def test_rows_that_disagree_with_the_table_are_refused(world, tmp_path):
    shutil.copytree(world["new"], tmp_path / "idx")
    np.save(tmp_path / "idx" / "v000001" / CATEGORY_ROWS_FILE, np.arange(5, dtype=np.int64))
    with pytest.raises(IndexDirError, match="inconsistent"):
        ProductIndex.load(tmp_path / "idx")


def test_a_format_1_build_upgraded_to_format_2_is_the_same_index(world, tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    copy_as_format(world["old"] / "v000001", up / "v000001", 2)
    publish(up, up / "v000001")
    a, b = ProductIndex.load(up), ProductIndex.load(world["new"])
    assert a.info.format_version == 2 and a.info.files == b.info.files and a.table.equals(b.table)
    xq = world["xb"][:20]
    c = CATEGORIES[0]
    np.testing.assert_array_equal(a.search(xq, 5, category=c)[1], b.search(xq, 5, category=c)[1])
