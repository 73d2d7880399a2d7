"""update_index: same answers as a build from scratch on the final catalogue, removals never returned, crash-safe."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow as pa
import pytest

import index.update as update_module
from index.build import build_index
from index.embedding_shards import (
    EmbeddingsManifest,
    IncrementalRecord,
    record_shard,
    write_delta,
    write_manifest,
    write_shard,
)
from index.layout import current_version, list_versions
from index.store import ProductIndex
from index.update import UpdateError, update_index
from tests.catalogue_vectors import CATEGORIES, clustered

FAST = {"n_eval_queries": 100, "n_tune_queries": 50}
D = 16


def write_folder(root, ids, xb, cats, *, shard_rows=500, incremental=None, sha="a" * 64):
    """An embeddings folder holding exactly these products (through the contract's writer)."""
    root.mkdir(parents=True)
    manifest = EmbeddingsManifest(checkpoint_sha256=sha, backbone="efficientnet-lite0", dim=xb.shape[1], complete=True,
                                  incremental=IncrementalRecord.from_json(incremental))
    for k, s in enumerate(range(0, len(ids), shard_rows)):
        e = min(len(ids), s + shard_rows)
        rows = pa.table({"product_id": pa.array(ids[s:e]), "category": pa.array(list(cats[s:e])),
                         "image_path": pa.array([f"img/{p}.jpg" for p in ids[s:e]])})
        record_shard(root, manifest, write_shard(root, k, rows, xb[s:e], checkpoint_sha256=sha))
    write_manifest(root, manifest)
    return root


@pytest.fixture
def catalogues(tmp_path):
    """Catalogue A, and B = A with 60 removed, 60 changed (new vectors) and 120 added; B's upserts folder."""
    xb, labels = clustered(2400, D, n_clusters=30, seed=0)
    cats = np.array([CATEGORIES[c % len(CATEGORIES)] for c in labels])
    ids = [f"p{i:05d}" for i in range(2400)]
    a = slice(0, 2280)
    rng = np.random.default_rng(0)
    removed = sorted(rng.choice(2280, 60, replace=False).tolist())
    changed = sorted(rng.choice(sorted(set(range(2280)) - set(removed)), 60, replace=False).tolist())
    xb_b = xb.copy()
    xb_b[changed] = clustered(60, D, n_clusters=30, seed=9)[0]
    keep_b = [i for i in range(2400) if i not in set(removed)]
    upserts = changed + list(range(2280, 2400))
    folder_a = write_folder(tmp_path / "a", ids[a], xb[a], cats[a])
    folder_b = write_folder(tmp_path / "b", [ids[i] for i in keep_b], xb_b[keep_b], cats[keep_b])
    folder_up = write_folder(tmp_path / "up", [ids[i] for i in upserts], xb_b[upserts], cats[upserts])
    return {"a": folder_a, "b": folder_b, "up": folder_up, "removed": [ids[i] for i in removed],
            "removed_xb": xb[removed], "xq": xb_b[::37], "n_b": len(keep_b)}


def by_product(index_dir, xq, k):
    index = ProductIndex.load(index_dir)
    inner = faiss.extract_index_ivf(index.faiss_index) if index.info.index_kind != "flat" else None
    if inner is not None:
        inner.nprobe = inner.nlist                          # every list: the exhaustive answer
    D_, neighbours = index.faiss_index.search(xq, k) if inner is not None else index.search(xq, k)
    pids = index.product_ids
    return [[pids[i] for i in row] for row in neighbours], D_


@pytest.mark.parametrize("factory, ondisk", [("Flat", False), ("IVF16,Flat", False), ("IVF16,Flat", True)])
def test_update_equals_a_build_from_scratch_on_the_final_catalogue(catalogues, tmp_path, factory, ondisk):
    c = catalogues
    build_index(c["a"], tmp_path / "idx", factory=factory, ondisk=ondisk, **FAST)
    info = update_index(tmp_path / "idx", c["up"], remove=c["removed"])
    assert info.n == c["n_b"] and info.version == "v000002" and current_version(tmp_path / "idx") == "v000002"
    assert info.update.upserted == 180 and info.update.dropped == 120
    assert info.ondisk == ondisk
    build_index(c["b"], tmp_path / "scratch", factory=factory, **FAST)
    got, D_got = by_product(tmp_path / "idx", c["xq"], 20)
    ref, D_ref = by_product(tmp_path / "scratch", c["xq"], 20)
    assert got == ref
    np.testing.assert_allclose(D_got, D_ref, rtol=0, atol=1e-6)
    index = ProductIndex.load(tmp_path / "idx")
    assert set(index.product_ids) == set(ProductIndex.load(tmp_path / "scratch").product_ids)
    assert index.info.counts_per_category == ProductIndex.load(tmp_path / "scratch").info.counts_per_category


def test_a_removed_product_is_never_returned(catalogues, tmp_path):
    c = catalogues
    build_index(c["a"], tmp_path / "idx", factory="IVF16,Flat", **FAST)
    update_index(tmp_path / "idx", remove=c["removed"])
    index = ProductIndex.load(tmp_path / "idx")
    gone = set(c["removed"])
    _, neighbours = index.search(c["removed_xb"], index.n)          # its own vector asks for it first
    assert not gone & {index.product_ids[i] for i in neighbours.ravel() if i >= 0}
    for category in index.categories:
        _, neighbours = index.search(c["removed_xb"][:5], 50, category=category)
        assert not gone & {index.product_ids[i] for i in neighbours.ravel() if i >= 0}


def test_a_delta_folder_applies_its_adds_changes_and_removals(catalogues, tmp_path):
    c = catalogues
    build_index(c["a"], tmp_path / "idx", factory="Flat", **FAST)
    # an incremental folder: the whole final catalogue plus the delta against A
    ids_b = pa.concat_tables([__import__("pyarrow.parquet").parquet.read_table(p)
                              for p in sorted(c["b"].glob("part-*.parquet"))]).column("product_id").to_pylist()
    delta_ids = c["removed"]
    write_delta(c["b"], delta_ids, ["removed"] * len(delta_ids))
    manifest = json.loads((c["b"] / "_manifest.json").read_text())
    manifest["incremental"] = {"base": str(c["a"]), "added": 0, "changed": 0, "removed": len(delta_ids)}
    (c["b"] / "_manifest.json").write_text(json.dumps(manifest))
    info = update_index(tmp_path / "idx", c["b"])
    assert info.update.upserted == 0 and info.update.dropped == 60 and info.n == 2220
    assert len(ids_b) == c["n_b"]


def test_a_crash_mid_update_leaves_the_old_version_serving(catalogues, tmp_path, monkeypatch):
    c = catalogues
    build_index(c["a"], tmp_path / "idx", factory="IVF16,Flat", **FAST)
    before = by_product(tmp_path / "idx", c["xq"], 10)[0]

    def crash(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(update_module.faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        update_index(tmp_path / "idx", c["up"], remove=c["removed"])
    monkeypatch.undo()
    assert current_version(tmp_path / "idx") == "v000001"
    assert not (tmp_path / "idx" / "v000002" / "info.json").exists()
    assert by_product(tmp_path / "idx", c["xq"], 10)[0] == before
    assert update_index(tmp_path / "idx", c["up"], remove=c["removed"]).version == "v000002"
    assert [b.name for b in list_versions(tmp_path / "idx")] == ["v000001", "v000002"]


def test_drift_report_says_when_a_rebuild_is_due(catalogues, tmp_path):
    c = catalogues
    build_index(c["a"], tmp_path / "idx", factory="IVF16,Flat", **FAST)
    ids = ProductIndex.load(tmp_path / "idx").product_ids.tolist()
    first = update_index(tmp_path / "idx", remove=ids[:100]).update
    assert first.churn_since_build == pytest.approx(100 / 2280, abs=1e-4)
    assert not first.rebuild_due, first
    assert first.imbalance > 0 and first.build_imbalance > 0
    second = update_index(tmp_path / "idx", remove=ids[100:500]).update
    assert second.churn_since_build == pytest.approx(500 / 2280, abs=1e-4)
    assert second.rebuild_due and "since the last full build" in second.rebuild_reasons[0]
    # the changed products' new vectors come from clusters the centroids never saw
    build_index(c["a"], tmp_path / "idx2", factory="IVF16,Flat", **FAST)
    third = update_index(tmp_path / "idx2", c["up"], remove=c["removed"]).update
    assert third.churn_since_build == pytest.approx(240 / 2280, abs=1e-4)   # 120 added, 60 changed, 60 removed
    assert third.rebuild_due and "further from their centroids" in third.rebuild_reasons[0]
    assert third.new_rows_centroid_score < third.build_centroid_score


def test_refusals(catalogues, tmp_path):
    c = catalogues
    build_index(c["a"], tmp_path / "hnsw", factory="HNSW16,Flat", **FAST)
    with pytest.raises(UpdateError, match="cannot drop or replace"):
        update_index(tmp_path / "hnsw", c["up"])
    build_index(c["a"], tmp_path / "idx", factory="Flat", **FAST)
    with pytest.raises(UpdateError, match="nothing to apply"):
        update_index(tmp_path / "idx")
    other = write_folder(tmp_path / "other", ["x1"], np.eye(1, D, dtype=np.float32), ["shoes"], sha="b" * 64)
    with pytest.raises(UpdateError, match="checkpoint"):
        update_index(tmp_path / "idx", other)
    with pytest.raises(UpdateError, match="both in the embeddings to add and among the removals"):
        update_index(tmp_path / "idx", c["up"], remove=["p02300"])
    assert current_version(tmp_path / "idx") == "v000001"
