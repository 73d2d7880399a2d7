"""build_index writes a new build folder (its files, info.json last), then moves the pointer; bad inputs are refused."""
import json
import os

import numpy as np
import pytest

import common.files
from index.build import BuildError, build_index
from index.embedding_shards import EmbeddingsError
from index.layout import FILES, POINTER_FILE, IndexInfo, current_version, list_versions
from index.rows import read_table
from index.store import ProductIndex
from tests.catalogue_vectors import clustered, write_embeddings

FAST = {"n_eval_queries": 100, "n_tune_queries": 50}


def test_build_writes_all_files_info_last(make_catalogue, tmp_path, monkeypatch):
    emb_dir, xb, cats = make_catalogue(1500, 16, extra={"brand": [f"b{i % 7}" for i in range(1500)]})
    renamed = []
    real_replace = os.replace

    def spy(src, dst):
        renamed.append(os.path.basename(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(common.files.os, "replace", spy)
    out = tmp_path / "idx"
    info = build_index(emb_dir, out, **FAST)
    assert info.version == "v000001" and current_version(out) == "v000001"
    build = out / "v000001"
    assert sorted(p.name for p in out.iterdir()) == sorted([".lock", POINTER_FILE, "v000001"])
    assert sorted(p.name for p in build.iterdir()) == sorted(FILES)
    assert renamed[-2:] == ["info.json", POINTER_FILE] and set(renamed) == {*FILES, POINTER_FILE}

    on_disk = json.loads((build / "info.json").read_text())
    assert on_disk == json.loads(json.dumps(info.to_dict())) and IndexInfo.read(build) == info
    assert info.n == 1500 and info.dim == 16 and info.metric == "inner_product"
    assert info.factory == "Flat" and info.checkpoint_sha256 == "a" * 64
    assert info.backbone == "efficientnet-lite0"
    assert info.counts_per_category == {c: int((cats == c).sum()) for c in sorted(set(cats))}
    assert info.recall.k == 20 and info.recall.value == 1.0
    assert info.memory.budget_bytes > 0 and info.build_seconds > 0

    ids = read_table(build, info.format_version)
    assert ids.column_names == ["product_id", "category", "image_path", "brand"]
    assert ids.column("product_id").to_pylist()[:2] == ["p000000", "p000001"]
    emb = np.load(build / "embeddings.f16.npy", mmap_mode="r")
    assert emb.dtype == np.float16 and emb.shape == (1500, 16)
    np.testing.assert_allclose(emb[:100].astype(np.float32), xb[:100], atol=1e-3)


def test_a_rebuild_is_a_new_version_and_an_open_index_keeps_working(make_catalogue, tmp_path):
    out = tmp_path / "idx"
    first, xb1, _ = make_catalogue(1200, 16, name="first")
    build_index(first, out, **FAST)
    serving = ProductIndex.load(out)
    second, xb2, _ = make_catalogue(800, 16, seed=3, name="second", sha="b" * 64)
    for _ in range(3):                                     # v2, v3, v4: v1 is pruned (3 kept)
        build_index(second, out, **FAST)
    assert [b.name for b in list_versions(out)] == ["v000002", "v000003", "v000004"]
    index = ProductIndex.load(out)
    assert (index.version, index.n, index.info.checkpoint_sha256) == ("v000004", 800, "b" * 64)
    np.testing.assert_allclose(index.embeddings([0, 799]), xb2[[0, 799]], atol=1e-3)
    # The reader that loaded v1 before it was pruned still answers from v1 (its files stay mapped).
    assert serving.version == "v000001" and serving.n == 1200
    np.testing.assert_allclose(serving.embeddings([5]), xb1[[5]], atol=1e-3)
    assert serving.search(xb1[:1], 1)[1][0, 0] == 0


def test_a_failed_rebuild_leaves_the_previous_version_serving(make_catalogue, tmp_path):
    out = tmp_path / "idx"
    good, xb, cats = make_catalogue(1000, 16, name="good")
    build_index(good, out, **FAST)
    bad_xb = xb.copy()
    bad_xb[500] *= 3.0                                     # not unit norm: found while streaming
    bad = write_embeddings(tmp_path / "bad", bad_xb, cats)
    with pytest.raises(EmbeddingsError, match="row 500 has norm"):
        build_index(bad, out, **FAST)
    assert current_version(out) == "v000001"
    assert not (out / "v000002" / "info.json").exists() and not list((out / "v000002").glob(".*.tmp"))
    assert ProductIndex.load(out).n == 1000
    build_index(good, out, **FAST)                          # the crashed build's folder is cleared first
    assert [b.name for b in list_versions(out)] == ["v000001", "v000002"]
    assert ProductIndex.load(out).version == "v000002"


def test_refuses_incomplete_manifest(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(300, 8, complete=False)
    with pytest.raises(EmbeddingsError, match="complete=false"):
        build_index(emb_dir, tmp_path / "idx", **FAST)
    assert not (tmp_path / "idx").exists()


def test_refuses_missing_folder_and_manifest(tmp_path):
    with pytest.raises(EmbeddingsError, match="does not exist"):
        build_index(tmp_path / "nowhere", tmp_path / "idx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbeddingsError, match="_manifest.json is missing"):
        build_index(tmp_path / "empty", tmp_path / "idx")


def test_refuses_dim_mismatch_between_shards(tmp_path):
    xb16, _ = clustered(200, 16)
    xb8, _ = clustered(200, 8)
    cats = np.array(["a"] * 200)
    root = write_embeddings(tmp_path / "emb", xb16, cats, shard_rows=200)
    other = write_embeddings(tmp_path / "other", xb8, cats, shard_rows=200)
    (other / "part-00000.parquet").rename(root / "part-00001.parquet")
    manifest = json.loads((root / "_manifest.json").read_text())
    manifest["shards"].append({"name": "part-00001.parquet", "rows": 200})
    (root / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbeddingsError, match="part-00001.parquet has 8-d embeddings but the manifest"):
        build_index(root, tmp_path / "idx")


def test_refuses_row_count_disagreement_and_missing_shard(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(300, 8, shard_rows=100)
    manifest = json.loads((emb_dir / "_manifest.json").read_text())
    manifest["shards"][1]["rows"] = 99
    (emb_dir / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbeddingsError, match="holds 100 rows but the manifest says 99"):
        build_index(emb_dir, tmp_path / "idx")
    manifest["shards"][1]["rows"] = 100
    manifest["shards"].append({"name": "part-00009.parquet", "rows": 5})
    (emb_dir / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbeddingsError, match="part-00009.parquet is listed in the manifest but missing"):
        build_index(emb_dir, tmp_path / "idx")


def test_only_listed_shards_count(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(300, 8, shard_rows=100)
    manifest = json.loads((emb_dir / "_manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:2]            # part-00002 is on disk but not finished
    (emb_dir / "_manifest.json").write_text(json.dumps(manifest))
    assert build_index(emb_dir, tmp_path / "idx", **FAST).n == 200


def test_bad_factory_and_budget_are_build_errors(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(300, 8)
    with pytest.raises(BuildError, match="factory string 'IVF12,Nonsense'"):
        build_index(emb_dir, tmp_path / "idx", factory="IVF12,Nonsense")
    with pytest.raises(BuildError, match="too small"):
        build_index(emb_dir, tmp_path / "idx", memory_budget_bytes=100)


def test_build_is_reproducible_with_a_seed(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(3000, 16, n_clusters=30)
    a = build_index(emb_dir, tmp_path / "a", factory="IVF16,Flat", seed=1, **FAST)
    b = build_index(emb_dir, tmp_path / "b", factory="IVF16,Flat", seed=1, **FAST)
    assert a.search_params == b.search_params and a.recall.value == b.recall.value
    assert a.recall.value >= 0.9 and a.index_kind == "ivf"
