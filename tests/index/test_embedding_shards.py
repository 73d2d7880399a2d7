"""The embeddings folder contract: what the writer writes the reader reads back; broken folders are refused."""
import json

import numpy as np
import pyarrow as pa
import pytest

from index.embedding_shards import (
    MANIFEST,
    REJECTS,
    EmbeddingsError,
    EmbeddingsManifest,
    IncrementalRecord,
    clear_output,
    finished_shards,
    holds_output,
    iter_embeddings,
    load_manifest,
    merge_rejects,
    read_manifest,
    read_metadata,
    record_shard,
    write_manifest,
    write_shard,
)
from tests.catalogue_vectors import clustered


def _rows(start, stop, **extra):
    return pa.table({"product_id": [f"p{i}" for i in range(start, stop)],
                     "category": ["shoes" if i % 2 else "bags" for i in range(start, stop)],
                     "image_path": [f"/img/{i}.jpg" for i in range(start, stop)], **extra})


def _folder(root, xb, shard=4, complete=True, rejects=None):
    manifest = EmbeddingsManifest(checkpoint_sha256="c" * 64, backbone="efficientnet-lite0", dim=xb.shape[1],
                                  shard_size=shard)
    for k, start in enumerate(range(0, len(xb), shard)):
        stop = min(len(xb), start + shard)
        entry = write_shard(root, k, _rows(start, stop, brand=[f"b{i}" for i in range(start, stop)]),
                            xb[start:stop], checkpoint_sha256="c" * 64, rejects=(rejects or {}).get(k, []))
        record_shard(root, manifest, entry)
    manifest.complete = complete
    write_manifest(root, manifest)
    return manifest


def test_round_trip_in_order_with_extra_columns(tmp_path):
    xb, _ = clustered(10, 8)
    _folder(tmp_path, xb)
    m = read_manifest(tmp_path)
    assert (m.n, m.dim, m.extra_columns, [r for _, r in m.shards]) == (10, 8, ("brand",), [4, 4, 2])
    blocks = list(iter_embeddings(m, batch_rows=3))
    assert [start for start, _ in blocks] == [0, 3, 4, 7, 8]      # batches never cross a shard
    np.testing.assert_array_equal(np.vstack([b for _, b in blocks]), xb)
    meta = read_metadata(m)
    assert meta.column("product_id").to_pylist() == [f"p{i}" for i in range(10)]
    assert meta.column_names == ["product_id", "category", "image_path", "brand"]
    assert read_metadata(m, ["product_id"]).column_names == ["product_id"]


def test_rejects_are_kept_per_shard_and_merged_in_order(tmp_path):
    xb, _ = clustered(6, 4)
    manifest = _folder(tmp_path, xb, shard=3, rejects={0: [("x0", "/a.jpg", "not an image")],
                                                      1: [("x1", "/b.jpg", "truncated image")]})
    assert [(s.rows, s.rejected) for s in manifest.shards] == [(3, 1), (3, 1)]
    assert (manifest.embedded, manifest.rejected) == (6, 2)
    merge_rejects(tmp_path, manifest)
    lines = [json.loads(line) for line in (tmp_path / REJECTS).read_text().splitlines()]
    assert [r["product_id"] for r in lines] == ["x0", "x1"] and lines[1]["reason"] == "truncated image"
    # Rewriting shard 0 without rejects removes its stale reject part.
    record_shard(tmp_path, manifest, write_shard(tmp_path, 0, _rows(0, 3), xb[:3], checkpoint_sha256="c" * 64))
    merge_rejects(tmp_path, manifest)
    assert [json.loads(line)["product_id"] for line in (tmp_path / REJECTS).read_text().splitlines()] == ["x1"]


def test_finished_shards_are_those_listed_and_present(tmp_path):
    xb, _ = clustered(8, 4)
    manifest = _folder(tmp_path, xb, complete=False)
    (tmp_path / manifest.shards[1].name).unlink()
    assert list(finished_shards(tmp_path, load_manifest(tmp_path))) == [0]
    assert load_manifest(tmp_path / "absent") is None


@pytest.mark.parametrize("breakage, message", [
    (lambda root, m: m.update(complete=False), "complete=false"),
    (lambda root, m: m.update(format="someone-else/v3"), "is not 'complete-the-look/embeddings-v1'"),
    (lambda root, m: m.update(dim=5), "4-d embeddings but the manifest"),
    (lambda root, m: m["shards"][0].update(rows=99), "holds 4 rows but the manifest says 99"),
    (lambda root, m: (root / m["shards"][1]["name"]).unlink(), "missing from"),
    (lambda root, m: m.update(shards=[]), "lists no rows"),
    (lambda root, m: m.pop("checkpoint_sha256"), "lacks the field(s) checkpoint_sha256"),
])
def test_the_reader_refuses_broken_folders(tmp_path, breakage, message):
    xb, _ = clustered(8, 4)
    manifest = _folder(tmp_path, xb).to_json()      # broken as the JSON file a reader finds
    breakage(tmp_path, manifest)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EmbeddingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(tmp_path)


def test_the_reader_refuses_vectors_that_are_not_unit_or_finite(tmp_path):
    xb, _ = clustered(4, 4)
    bad = xb.copy()
    bad[2] *= 3
    _folder(tmp_path, bad)
    with pytest.raises(EmbeddingsError, match="row 2 has norm 3.0000"):
        list(iter_embeddings(read_manifest(tmp_path)))


def test_the_writer_refuses_misaligned_rows_and_clear_removes_only_the_contract(tmp_path):
    xb, _ = clustered(4, 4)
    with pytest.raises(ValueError, match="3 rows but embeddings of shape"):
        write_shard(tmp_path, 0, _rows(0, 3), xb, checkpoint_sha256="c")
    _folder(tmp_path, xb, rejects={0: [("x", "/x.jpg", "bad")]})
    (tmp_path / "notes.txt").write_text("mine")
    assert holds_output(tmp_path)
    clear_output(tmp_path)
    assert not holds_output(tmp_path) and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_manifest_round_trips_and_an_older_manifest_loads_with_its_defaults(tmp_path):
    xb, _ = clustered(8, 4)
    written = _folder(tmp_path, xb)
    assert load_manifest(tmp_path) == written and written.version == 2
    saved = json.loads((tmp_path / MANIFEST).read_text())
    assert (saved["embedded"], saved["rejected"], saved["jpeg_draft"]) == (8, 0, False)
    # A manifest from before the version and --jpeg-draft were recorded, with a field this version dropped.
    for key in ("version", "jpeg_draft"):
        del saved[key]
    saved["a_retired_field"] = 1
    (tmp_path / MANIFEST).write_text(json.dumps(saved))
    old = load_manifest(tmp_path)
    assert (old.version, old.jpeg_draft, old.embedded, [s.rows for s in old.shards]) == (1, False, 8, [4, 4])
    assert EmbeddingsManifest.from_json(old.to_json()) == old
    saved["incremental"] = {"base": "/emb/v1", "added": 2, "a_later_count": 1}   # typed, tolerant too
    assert EmbeddingsManifest.from_json(saved).incremental == IncrementalRecord("/emb/v1", added=2)
    saved["shards"][0]["rows"] = -1
    (tmp_path / MANIFEST).write_text(json.dumps(saved))
    with pytest.raises(EmbeddingsError, match="bad shard entry"):
        load_manifest(tmp_path)
