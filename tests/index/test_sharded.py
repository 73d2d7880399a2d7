"""Sharded build (local processes, Ray tasks) and on-disk inverted lists against the single-process build."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.build import BuildError, build_index
from index.embedding_shards import read_manifest
from index.layout import CATEGORY_ROWS_FILE, IVFDATA_FILE, IndexInfo
from index.rows import read_table
from index.sharded import split_shards
from index.store import ProductIndex

FAST = {"n_eval_queries": 100, "n_tune_queries": 50}


def _answers(index_dir, xq, k=20):
    index = ProductIndex.load(index_dir)
    D, neighbours = index.search(xq, k)
    ivf = faiss.extract_index_ivf(index.faiss_index)
    ivf.nprobe = ivf.nlist
    D_all, I_all = index.faiss_index.search(xq, k)       # every list: the whole index, exactly as stored
    return index, D, neighbours, D_all, I_all


def test_split_shards_covers_every_row_once_in_order(make_catalogue):
    emb_dir, _, _ = make_catalogue(2300, 8, shard_rows=300)
    manifest = read_manifest(emb_dir)
    for groups in (1, 2, 3, 8, 50):
        plan = split_shards(manifest, groups)
        assert len(plan) == min(groups, 8)
        assert [first for _, first in plan] == list(np.cumsum([0] + [m.n for m, _ in plan[:-1]]))
        assert sum(m.n for m, _ in plan) == 2300
        assert [name for m, _ in plan for name, _ in m.shards] == [name for name, _ in manifest.shards]


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ8x8"])
def test_sharded_and_ondisk_builds_equal_the_single_process_build(make_catalogue, tmp_path, factory):
    emb_dir, xb, _ = make_catalogue(12_000, 32, n_clusters=40, shard_rows=1000)
    xq = xb[::97] + np.random.default_rng(1).normal(0, 0.02, (len(xb[::97]), 32)).astype(np.float32)
    single = build_index(emb_dir, tmp_path / "single", factory=factory, **FAST)
    sharded = build_index(emb_dir, tmp_path / "sharded", factory=factory, workers=2, **FAST)
    ondisk = build_index(emb_dir, tmp_path / "ondisk", factory=factory, workers=3, ondisk=True, **FAST)
    assert (single.phases["groups"], sharded.phases["groups"], ondisk.phases["groups"]) == (1, 2, 3)
    assert ondisk.ondisk and not sharded.ondisk and (tmp_path / "ondisk" / "v000001" / IVFDATA_FILE).is_file()
    for info in (sharded, ondisk):
        assert info.search_params == single.search_params
        assert info.recall.value == single.recall.value
    ref = _answers(tmp_path / "single", xq)
    for name in ("sharded", "ondisk"):
        got = _answers(tmp_path / name, xq)
        assert got[0].mmap
        for a, b in zip(ref[1:], got[1:], strict=True):
            np.testing.assert_array_equal(a, b)
        # the same inverted lists, entry for entry
        ivf_a, ivf_b = (faiss.extract_index_ivf(x[0].faiss_index) for x in (ref, got))
        for lst in range(ivf_a.nlist):
            size = ivf_a.invlists.list_size(lst)
            assert ivf_b.invlists.list_size(lst) == size
            if size:
                ids_a = faiss.rev_swig_ptr(ivf_a.invlists.get_ids(lst), size)
                ids_b = faiss.rev_swig_ptr(ivf_b.invlists.get_ids(lst), size)
                np.testing.assert_array_equal(ids_a, ids_b)
        build = tmp_path / name / "v000001"
        assert not (build / ".parts").exists()
        assert read_table(build, 2).equals(read_table(tmp_path / "single" / "v000001", 2))
        np.testing.assert_array_equal(np.load(build / CATEGORY_ROWS_FILE),
                                      np.load(tmp_path / "single" / "v000001" / CATEGORY_ROWS_FILE))
    info = IndexInfo.read(tmp_path / "ondisk" / "v000001")
    assert IVFDATA_FILE in info.files and info.memory.ivfdata_bytes > 0


def test_an_ondisk_build_loads_after_the_folder_moves(make_catalogue, tmp_path):
    emb_dir, xb, _ = make_catalogue(3000, 16, shard_rows=500)
    build_index(emb_dir, tmp_path / "a", factory="IVF16,Flat", ondisk=True, **FAST)
    (tmp_path / "a").rename(tmp_path / "b")
    index = ProductIndex.load(tmp_path / "b")
    assert index.search(xb[:5], 1)[1][:, 0].tolist() == [0, 1, 2, 3, 4]
    assert index.search(xb[:5], 3, category=str(index.categories[0]))[1].shape == (5, 3)


def test_ondisk_needs_an_ivf_index_and_flat_falls_back_to_one_process(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(1000, 8)
    with pytest.raises(BuildError, match="on-disk inverted lists need an IVF index") as refused:
        build_index(emb_dir, tmp_path / "idx", factory="Flat", ondisk=True, **FAST)
    assert refused.value.hint.options == ["factory", "memory_budget", "ondisk"] and "--" not in str(refused.value)
    logs = []
    info = build_index(emb_dir, tmp_path / "idx", factory="Flat", workers=2, log=logs.append, **FAST)
    assert info.parallel is None and any("adding in one process" in m for m in logs)
    with pytest.raises(BuildError, match="workers must be a positive integer"):
        build_index(emb_dir, tmp_path / "idx", workers=0)


def test_ray_tasks_build_the_same_index(make_catalogue, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray extra is not installed")
    emb_dir, xb, _ = make_catalogue(4000, 16, shard_rows=500)
    single = build_index(emb_dir, tmp_path / "single", factory="IVF16,Flat", **FAST)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        info = build_index(emb_dir, tmp_path / "ray", factory="IVF16,Flat", engine="ray", workers=2, **FAST)
    finally:
        ray.shutdown()
    assert info.parallel["engine"] == "ray" and info.phases["groups"] == 2
    for a, b in zip(_answers(tmp_path / "single", xb[:50])[1:], _answers(tmp_path / "ray", xb[:50])[1:], strict=True):
        np.testing.assert_array_equal(a, b)
    assert info.recall.value == single.recall.value
