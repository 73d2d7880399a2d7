"""What a long-running service needs from Retriever: batched scene encoding, stage timings, a swapped index."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from index.store import CheckpointMismatchError, ProductIndex
from pipeline.images import load_image
from retrieval.retriever import RetrievalError, Retriever
from tests.retrieval.world import N_PRODUCTS, build_test_index, write_embedding_shard


def test_encode_scenes_equals_one_scene_at_a_time(world, retriever):
    images = [load_image(p) for p in world.scenes] + [load_image(world.scenes[0]).convert("L")]
    batched = retriever.encode_scenes(images)
    assert len(batched) == len(images)
    for image, scene in zip(images, batched, strict=True):
        one = retriever.encode_scene(image)
        assert scene.f_s.shape == one.f_s.shape and scene.f_i.shape == one.f_i.shape
        torch.testing.assert_close(scene.f_s, one.f_s, atol=1e-5, rtol=0)
        torch.testing.assert_close(scene.f_i, one.f_i, atol=1e-5, rtol=0)
        assert scene.image.mode == "RGB"
    assert retriever.encode_scenes([]) == []
    # the answers from a batch-encoded scene are those of the image
    flat = retriever.retrieve(batched[1], k=5)
    assert [h.product_id for h in flat] == [h.product_id for h in retriever.retrieve(images[1], k=5)]


def test_timings_name_each_stage(world, retriever, scenes):
    t: dict = {}
    retriever.retrieve(world.scenes[0], k=3, timings=t)
    assert set(t) == {"forward", "stage1", "stage2"} and all(v >= 0 for v in t.values())
    t = {}
    retriever.retrieve(scenes[0], k=3, timings=t)          # already encoded: no forward
    assert set(t) == {"stage1", "stage2"}
    t = {}
    retriever.look(scenes[0], k=2, timings=t)
    assert set(t) == {"stage1", "stage2"}
    t = {}
    retriever.encode_scenes([world.scenes[0], world.scenes[1]], timings=t)
    assert set(t) == {"forward"}


def test_with_index_shares_the_model_and_leaves_the_original_alone(world, retriever, scenes, tmp_path):
    # The same products under other ids: a retriever over the new build answers with the new ids.
    emb = retriever.index.embeddings(np.arange(N_PRODUCTS))
    new_ids = [f"new-{p}" for p in world.product_ids]
    write_embedding_shard(tmp_path / "emb", new_ids, world.categories,
                          [world.root / "images" / f"{p}.png" for p in world.product_ids], emb, world.sha256)
    build_test_index(tmp_path / "emb", tmp_path / "idx")
    swapped = retriever.with_index(ProductIndex.load(tmp_path / "idx"))
    assert swapped.embedder is retriever.embedder and swapped.checkpoint is retriever.checkpoint
    before = [h.product_id for h in retriever.retrieve(scenes[0], k=4)]
    after = [h.product_id for h in swapped.retrieve(scenes[0], k=4)]
    assert after == [f"new-{p}" for p in before]
    assert all(not p.startswith("new-") for p in (h.product_id for h in retriever.retrieve(scenes[0], k=4)))


def test_with_index_refuses_another_checkpoints_index(world, retriever, tmp_path):
    emb = retriever.index.embeddings(np.arange(N_PRODUCTS))
    write_embedding_shard(tmp_path / "emb", world.product_ids, world.categories,
                          [world.root / "images" / f"{p}.png" for p in world.product_ids], emb, "0" * 64)
    build_test_index(tmp_path / "emb", tmp_path / "idx")
    with pytest.raises(CheckpointMismatchError, match="built from checkpoint sha256 0000"):
        retriever.with_index(ProductIndex.load(tmp_path / "idx"))


def test_with_index_refuses_another_dimension(world, retriever, tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N_PRODUCTS, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    write_embedding_shard(tmp_path / "emb", world.product_ids, world.categories,
                          [world.root / "images" / f"{p}.png" for p in world.product_ids], emb, world.sha256)
    build_test_index(tmp_path / "emb", tmp_path / "idx")
    with pytest.raises(RetrievalError, match="d=8"):
        retriever.with_index(ProductIndex.load(tmp_path / "idx"))


def test_a_traced_backbone_gives_the_eager_answers(world, tmp_path):
    eager = Retriever.load(checkpoint=world.checkpoint, index_dir=world.index_dir)
    traced = Retriever.load(checkpoint=world.checkpoint, index_dir=world.index_dir)
    assert not traced.traced
    traced.trace_backbone()
    traced.trace_backbone()                                   # idempotent
    assert traced.traced and not eager.traced
    images = [load_image(p) for p in world.scenes] + [load_image(world.scenes[0]).resize((99, 301))]
    # batch 3 on a batch-1 trace
    for one, other in zip(eager.encode_scenes(images), traced.encode_scenes(images), strict=True):
        torch.testing.assert_close(one.f_s, other.f_s, atol=5e-5, rtol=0)   # batch norms folded: float rounding
        torch.testing.assert_close(one.f_i, other.f_i, atol=5e-5, rtol=0)
    for image in images:
        a, b = eager.retrieve(image, k=8), traced.retrieve(image, k=8)
        assert [h.product_id for h in a] == [h.product_id for h in b]
    assert traced.with_index(traced.index).traced             # a swapped-in index keeps the graph
