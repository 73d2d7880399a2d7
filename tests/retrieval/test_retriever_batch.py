"""The batched paths the service runs (one forward, one FAISS search, one re-rank for B scenes) against one scene
at a time: padding rows and padding columns never reach an answer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.images import image_to_tensor, load_image
from retrieval.results import Scene
from retrieval.retriever import Retriever
from tests.retrieval.world import N_PRODUCTS


def hits(result):
    return [(h.product_id, round(h.hybrid_distance, 5)) for h in result.hits]


def test_padded_forward_equals_the_unpadded_rows(world, retriever):
    images = [load_image(p) for p in world.scenes]
    pixels = torch.stack([image_to_tensor(img, retriever.input_size) for img in images])
    alone = [retriever.encode_pixels(pixels[j:j + 1]) for j in range(len(images))]
    for pad_to in (None, 2, 4, 8):
        f_s, f_i, presence = retriever.encode_pixels(pixels, pad_to=pad_to)
        assert f_s.shape[0] == f_i.shape[0] == len(images) and presence is None   # the padding rows are cut off
        for j, (one_s, one_i, _) in enumerate(alone):
            torch.testing.assert_close(f_s[j:j + 1], one_s, atol=1e-5, rtol=0)
            torch.testing.assert_close(f_i[j:j + 1], one_i, atol=1e-5, rtol=0)


def test_stage_one_batch_equals_one_search_per_scene(retriever, scenes):
    f_s = torch.cat([s.f_s for s in scenes])
    for category in (None, retriever.categories[1]):
        batch = retriever.candidates_batch(f_s, 7, category=category)
        for scene, rows in zip(scenes, batch, strict=True):
            np.testing.assert_array_equal(rows, retriever.candidates(scene.f_s, 7, category=category))
    assert [len(r) for r in retriever.candidates_batch(f_s, 0)] == [0, 0]


def test_stage_two_batch_of_uneven_lists_equals_each_list_alone(retriever, scenes):
    rng = np.random.default_rng(0)
    lists = [rng.permutation(N_PRODUCTS)[:9], np.zeros(0, dtype=np.int64), rng.permutation(N_PRODUCTS)[:3]]
    three = [scenes[0], scenes[1], scenes[0]]
    f_s = torch.cat([s.f_s for s in three])
    f_i = torch.cat([s.f_i for s in three])
    batch = retriever.rerank_batch(f_s, f_i, lists)
    for scene, rows, got in zip(three, lists, batch, strict=True):
        want = retriever.rerank(scene.f_s, scene.f_i, rows)
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == (len(rows),)              # no padding column comes back
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("params", [{"k": 4}, {"k": 3, "candidates": 5}, {"k": 2, "category": "hat"}])
def test_retrieve_batch_equals_retrieve(retriever, scenes, params):
    batch = [scenes[0], scenes[1], scenes[1], scenes[0]]
    t: dict = {}
    results = retriever.retrieve_batch(batch, timings=t, **params)
    assert set(t) == {"stage1", "stage2"}
    for scene, result in zip(batch, results, strict=True):
        want = retriever.retrieve(scene, **params)
        assert hits(result) == hits(want) and result.candidates == want.candidates
        assert result.category == want.category


def test_batches_encode_the_images_they_are_given(world, retriever):
    t: dict = {}
    results = retriever.retrieve_batch([world.scenes[0], world.scenes[1]], k=3, timings=t)
    assert set(t) == {"forward", "stage1", "stage2"}
    assert [hits(r) for r in results] == [hits(retriever.retrieve(p, k=3)) for p in world.scenes]


def test_look_batch_with_a_different_plan_per_scene(presence_paths, world):
    ckpt, index_dir = presence_paths
    r = Retriever.load(checkpoint=ckpt, index_dir=index_dir)
    scene = r.encode_scene(world.scenes[0])
    vocab = r.embedder.categories
    # Three scenes with the same embeddings and three presence patterns: each look leaves out its own categories.
    patterns = [torch.zeros(len(vocab)), torch.ones(len(vocab)),
                torch.tensor([0.9 if j % 2 else 0.1 for j in range(len(vocab))])]
    three = [Scene(image=scene.image, f_s=scene.f_s, f_i=scene.f_i, presence=p) for p in patterns]
    for params in ({"k": 2}, {"k": 2, "include_present": True}, {"k": 3, "categories": ["shoes", "hat"]}):
        batch = r.look_batch(three, **params)
        for s, got in zip(three, batch, strict=True):
            want = r.look(s, **params)
            assert [c.category for c in got.categories] == [c.category for c in want.categories]
            assert got.left_out == want.left_out
            for a, b in zip(got.categories, want.categories, strict=True):
                assert hits(a) == hits(b) and a.candidates == b.candidates and a.present == b.present
                np.testing.assert_allclose(a.attention, b.attention, atol=1e-6)
    missing = len(vocab) - len(vocab) // 2
    assert [len(x.categories) for x in r.look_batch(three, k=1)] == [len(vocab), 0, missing]


def test_compatibility_batch_equals_compatibility(presence_paths, world):
    ckpt, index_dir = presence_paths
    r = Retriever.load(checkpoint=ckpt, index_dir=index_dir)
    encoded = r.encode_scenes(world.scenes)
    ids = world.product_ids[:5]
    for scene, got in zip(encoded, r.compatibility_batch(encoded, ids), strict=True):
        want = r.compatibility(scene, ids)
        assert got.threshold == want.threshold
        assert [p.product_id for p in got.products] == ids == [p.product_id for p in want.products]
        for a, b in zip(got.products, want.products, strict=True):
            assert (a.category, a.completes) == (b.category, b.completes)
            assert (a.hybrid_distance, a.probability) == pytest.approx((b.hybrid_distance, b.probability), abs=1e-6)


def test_the_re_rank_weighs_each_product_by_its_categorys_fitted_local_weight(retriever, scenes):
    import copy
    fitted = copy.copy(retriever)
    fitted.embedder = copy.deepcopy(retriever.embedder)
    names = fitted.embedder.categories
    weights = {c: round(0.1 + 0.8 * i / max(len(names) - 1, 1), 3) for i, c in enumerate(names)}
    fitted.embedder.set_local_weights(weights)
    rows = np.arange(N_PRODUCTS)
    got = fitted.rerank_batch(scenes[0].f_s, scenes[0].f_i, [rows])[0]
    w = np.array([weights[fitted.row_category(int(r))] for r in rows])
    np.testing.assert_allclose(got["hybrid"], (1 - w) * got["global"] + w * got["local"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["paper"], 0.5 * (got["global"] + got["local"]), rtol=0, atol=1e-6)
    plain = retriever.rerank(scenes[0].f_s, scenes[0].f_i, rows)      # the paper's form: w = 1/2 everywhere
    np.testing.assert_allclose(plain["hybrid"], got["paper"], rtol=0, atol=1e-6)
