"""Two-stage retrieval against oracles: exhaustive hybrid ranking computed one product at a time."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.store import CheckpointMismatchError, IndexDirError
from retrieval.retriever import RetrievalError, Retriever
from tests.retrieval.world import CATEGORIES, N_PRODUCTS, PER_CATEGORY, build_test_index, ranked, write_embedding_shard


def assert_matches_oracle(result, oracle, expected_ids):
    assert [h.product_id for h in result.hits] == expected_ids
    for h in result.hits:
        o = oracle[h.product_id]
        assert h.category == o["category"]
        assert h.global_distance == pytest.approx(o["global"], abs=1e-5)
        assert h.local_distance == pytest.approx(o["local"], abs=1e-5)
        assert h.hybrid_distance == pytest.approx(o["hybrid"], abs=1e-5)
        assert h.score == pytest.approx(1 - o["hybrid"] / 2, abs=1e-5)


def test_world_embeddings_are_distinct(oracles):
    for oracle in oracles:
        hybrid = np.array(sorted(o["hybrid"] for o in oracle.values()))
        assert np.diff(hybrid).min() > 1e-4, "the oracle needs a ranking without near-ties"


def test_flat_stage_one_equals_brute_force(retriever, scenes):
    f_s = scenes[0].f_s
    xb = retriever.index.embeddings(np.arange(N_PRODUCTS))
    d_g = ((xb - f_s.numpy()) ** 2).sum(1)
    rows = retriever.candidates(f_s, N_PRODUCTS)
    assert sorted(rows.tolist()) == list(range(N_PRODUCTS))
    np.testing.assert_allclose(d_g[rows], np.sort(d_g), atol=2e-3)  # in d_g order, up to f16 rounding
    for c in (1, 5):
        assert set(retriever.candidates(f_s, c).tolist()) <= set(np.argsort(d_g)[: c + 1].tolist())


@pytest.mark.parametrize("i", [0, 1])
def test_all_candidates_equals_exhaustive_hybrid_ranking(retriever, scenes, oracles, i):
    result = retriever.retrieve(scenes[i], k=N_PRODUCTS, candidates=N_PRODUCTS)
    assert result.candidates == N_PRODUCTS
    assert [h.rank for h in result.hits] == list(range(1, N_PRODUCTS + 1))
    assert_matches_oracle(result, oracles[i], ranked(oracles[i]))


@pytest.mark.parametrize("c, k", [(8, 5), (3, 3), (12, 12)])
def test_fewer_candidates_rerank_the_global_top_c(global_retriever, scenes, oracles, c, k):
    oracle = oracles[0]
    top_c = set(ranked(oracle, "global")[:c])
    result = global_retriever.retrieve(scenes[0], k=k, candidates=c)
    assert result.candidates == c
    assert {h.product_id for h in result.hits} <= top_c
    assert_matches_oracle(result, oracle, ranked(oracle, among=top_c)[:k])


@pytest.mark.parametrize("i", [0, 1])
@pytest.mark.parametrize("c, k", [(8, 5), (3, 3), (12, 12), (1, 1)])
def test_hybrid_stage_one_with_few_candidates_equals_exhaustive_ranking(retriever, scenes, oracles, c, k, i):
    # the hybrid's own nearest are the candidates: two-stage is the exhaustive top k at any C >= k
    result = retriever.retrieve(scenes[i], k=k, candidates=c)
    assert result.candidates == c
    assert_matches_oracle(result, oracles[i], ranked(oracles[i])[:k])


def test_hybrid_stage_one_is_the_hybrid_order_of_each_category(retriever, scenes, oracles):
    f_s, f_i = scenes[1].f_s, scenes[1].f_i
    for cat in CATEGORIES:
        among = {pid for pid, o in oracles[1].items() if o["category"] == cat}
        rows = retriever.stage1_batch(f_s, f_i, len(among), category=cat)[0]
        assert [retriever.index.product_ids[r] for r in rows] == ranked(oracles[1], among=among)
    flat = retriever.stage1_batch(f_s, f_i, 7)[0]             # every category by its own query, the 7 best kept
    assert [retriever.index.product_ids[r] for r in flat] == ranked(oracles[1])[:7]


def test_unknown_stage_one_is_refused(world):
    with pytest.raises(RetrievalError, match="unknown stage 1 'local'; known: hybrid, global"):
        Retriever.load(checkpoint=world.checkpoint, index_dir=world.index_dir, stage1="local")


def test_candidates_raised_to_k(retriever, scenes):
    result = retriever.retrieve(scenes[0], k=6, candidates=2)
    assert len(result) == 6 and result.candidates == 6


@pytest.mark.parametrize("stage1", ["hybrid", "global"])
def test_category_filter_returns_only_that_category(retriever, global_retriever, scenes, oracles, stage1):
    r = retriever if stage1 == "hybrid" else global_retriever
    for cat in CATEGORIES:
        for c in (3, 200):
            result = r.retrieve(scenes[1], k=3, candidates=c, category=cat)
            assert len(result) == 3
            assert {h.category for h in result.hits} == {cat}
            among = {pid for pid, o in oracles[1].items() if o["category"] == cat}
            if stage1 == "global":   # the global top c of the category, then the hybrid order among them
                among = set(ranked(oracles[1], "global", among=among)[:c])
            assert_matches_oracle(result, oracles[1], ranked(oracles[1], among=among)[:3])


def test_category_names_resolve_case_insensitively(retriever, scenes):
    assert retriever.resolve_category("Hat") == "hat"
    result = retriever.retrieve(scenes[0], k=2, category="SHOES")
    assert result.category == "shoes" and {h.category for h in result.hits} == {"shoes"}


def test_k_larger_than_catalogue_returns_all(retriever, scenes):
    result = retriever.retrieve(scenes[0], k=1000)
    assert len(result) == N_PRODUCTS
    assert len({h.product_id for h in result.hits}) == N_PRODUCTS
    result = retriever.retrieve(scenes[0], k=1000, category="hat")
    assert len(result) == PER_CATEGORY


def test_hits_carry_image_and_metadata(world, retriever):
    result = retriever.retrieve(Image.open(world.scenes[0]), k=3)
    for h in result.hits:
        assert Path(h.image_path).is_file()
        assert h.metadata.get("brand", "").startswith("brand-")
        d = h.to_dict()
        assert {"rank", "product_id", "category", "score", "global_distance", "local_distance", "image"} <= set(d)
        json.dumps(d)


def test_attention_map_is_a_distribution_over_the_grid(world, retriever):
    result = retriever.retrieve(world.scenes[0], k=1)  # end to end from a path
    maps = {c: result.attention_map(c) for c in CATEGORIES}
    for m in maps.values():
        assert m.shape == (7, 7)
        assert m.min() >= 0 and m.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(maps["shoes"], maps["hat"])
    with pytest.raises(RetrievalError, match="known: shoes, handbag, hat"):
        result.attention_map("scarf")


def test_bad_arguments(retriever, scenes):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(RetrievalError, match="k must be"):
            retriever.retrieve(scenes[0], k=bad)
    with pytest.raises(RetrievalError, match="candidates must be"):
        retriever.retrieve(scenes[0], candidates=0)
    with pytest.raises(RetrievalError, match=r"unknown category 'scarf'; known: .*shoes"):
        retriever.retrieve(scenes[0], category="scarf")


def test_index_from_another_checkpoint_is_refused(world, tmp_path):
    other = world.other_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointMismatchError, match="built from checkpoint sha256"):
        Retriever.load(checkpoint=other, index_dir=world.index_dir)


def test_missing_index(world, tmp_path):
    with pytest.raises(IndexDirError, match="does not exist"):
        Retriever.load(checkpoint=world.checkpoint, index_dir=tmp_path / "nowhere")


def test_category_outside_checkpoint_vocabulary(world, retriever, scenes, tmp_path):
    # A checkpoint that knows only two of the index's three categories, and an index built for it.
    ckpt = world.other_checkpoint(tmp_path / "two.pt", categories=["shoes", "handbag"])
    from common.files import sha256_of

    emb = retriever.index.embeddings(np.arange(N_PRODUCTS))
    write_embedding_shard(tmp_path / "emb", world.product_ids, world.categories,
                          [world.root / "images" / f"{p}.png" for p in world.product_ids], emb, sha256_of(ckpt))
    build_test_index(tmp_path / "emb", tmp_path / "idx")
    r = Retriever.load(checkpoint=ckpt, index_dir=tmp_path / "idx")
    assert len(r.retrieve(scenes[0], k=3, category="shoes")) == 3
    with pytest.raises(RetrievalError, match=r"\['hat'\] are not in the checkpoint's vocabulary"):
        r.retrieve(scenes[0], k=3, candidates=N_PRODUCTS)
    with pytest.raises(RetrievalError, match="not in the checkpoint's vocabulary"):
        r.retrieve(scenes[0], k=3, category="hat")


# -- the whole look ------------------------------------------------------------------------------

@pytest.mark.parametrize("k, c", [(3, 200), (2, 4), (7, 7), (10, 2)])
def test_look_per_category_equals_retrieve_with_that_category(retriever, scenes, k, c):
    for scene in scenes:
        look = retriever.look(scene, k=k, candidates=c)
        assert [cl.category for cl in look] == sorted(CATEGORIES)
        for cl in look:
            flat = retriever.retrieve(scene, k=k, candidates=c, category=cl.category)
            assert [h.product_id for h in cl.hits] == [h.product_id for h in flat.hits]
            assert [h.rank for h in cl.hits] == list(range(1, len(flat.hits) + 1))
            for a, b in zip(cl.hits, flat.hits, strict=True):
                assert a.hybrid_distance == pytest.approx(b.hybrid_distance, abs=1e-6)
                assert a.global_distance == pytest.approx(b.global_distance, abs=1e-6)
            assert cl.candidates == flat.candidates


def test_look_with_every_candidate_equals_the_exhaustive_ranking_per_category(retriever, scenes, oracles):
    for scene, oracle in zip(scenes, oracles, strict=True):
        look = retriever.look(scene, k=PER_CATEGORY, candidates=N_PRODUCTS)
        for cl in look:
            among = {pid for pid, o in oracle.items() if o["category"] == cl.category}
            assert_matches_oracle(cl, oracle, ranked(oracle, among=among))


def test_look_attention_grids_are_the_categories_attention_maps(retriever, scenes):
    look = retriever.look(scenes[0], k=2)
    flat = retriever.retrieve(scenes[0], k=2)
    grids = [cl.attention for cl in look]
    for cl in look:
        assert cl.attention.shape == (7, 7) and cl.attention.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(cl.attention, flat.attention_map(cl.category), atol=1e-6)
    assert not np.allclose(grids[0], grids[1])          # each category looks somewhere else


def test_look_over_chosen_categories_and_its_json(retriever, scenes):
    look = retriever.look(scenes[1], k=2, categories=["HAT", "shoes", "hat"])
    assert [cl.category for cl in look] == ["hat", "shoes"]        # resolved, de-duplicated, in the order asked
    data = look.to_dict(scene="scene1.jpg")
    assert data["scene"] == "scene1.jpg" and [c["category"] for c in data["categories"]] == ["hat", "shoes"]
    first = data["categories"][0]
    assert set(first) == {"category", "present", "presence_probability", "attention", "hits"}
    assert len(first["attention"]) == 7 and all(len(row) == 7 for row in first["attention"])
    assert first["hits"][0] == look.category("hat").hits[0].to_dict()
    with pytest.raises(RetrievalError, match="unknown category 'scarf'"):
        retriever.look(scenes[1], categories=["scarf"])
    with pytest.raises(RetrievalError, match="k must be an integer"):
        retriever.look(scenes[1], k=0)


def test_with_stage1_shares_the_model_and_leaves_the_original_alone(retriever, scenes):
    paper = retriever.with_stage1("global")
    assert paper.stage1 == "global" and retriever.stage1 == "hybrid"
    assert paper.embedder is retriever.embedder and paper.index is retriever.index
    f_s, f_i = scenes[0].f_s, scenes[0].f_i
    np.testing.assert_array_equal(paper.stage1_batch(f_s, f_i, 5)[0], retriever.candidates(f_s, 5))
    with pytest.raises(RetrievalError, match="unknown stage 1"):
        retriever.with_stage1("local")
