"""The whole look with the presence head, and "does this product complete the scene?", against oracles."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common import defaults
from retrieval.results import Scene
from retrieval.retriever import RetrievalError, Retriever
from tests.retrieval.world import BIASES, CATEGORIES, PLATT, exhaustive


@pytest.fixture(scope="session")
def presence_world(presence_paths) -> Retriever:
    ckpt, index_dir = presence_paths
    return Retriever.load(checkpoint=ckpt, index_dir=index_dir)


def test_encoded_scenes_carry_the_heads_presence_probabilities(presence_world, world):
    scene = presence_world.encode_scene(world.scenes[0])
    expected = torch.sigmoid(torch.tensor([BIASES[c] for c in presence_world.embedder.categories]))
    assert torch.allclose(scene.presence, expected, atol=1e-6)
    assert presence_world.notes == [] and presence_world.checkpoint.has_presence


def test_the_whole_look_leaves_out_present_categories_and_lists_missing_ones_first(presence_world, world):
    look = presence_world.look(world.scenes[0], k=3)
    assert [cl.category for cl in look] == ["handbag"]
    assert look.left_out == pytest.approx({"hat": float(torch.sigmoid(torch.tensor(0.1))),
                                           "shoes": float(torch.sigmoid(torch.tensor(3.0)))})
    assert look.categories[0].present is False
    assert look.categories[0].presence_probability == pytest.approx(float(torch.sigmoid(torch.tensor(-3.0))))
    full = presence_world.look(world.scenes[0], k=3, include_present=True)
    assert [cl.category for cl in full] == ["handbag", "hat", "shoes"] and full.left_out == {}
    assert [cl.present for cl in full] == [False, True, True]
    for cl in full:                                   # presence never changes what a category recommends
        flat = presence_world.retrieve(world.scenes[0], k=3, category=cl.category)
        assert [h.product_id for h in cl.hits] == [h.product_id for h in flat.hits]
        assert cl.attention.sum() == pytest.approx(1.0, abs=1e-6)
    asked = presence_world.look(world.scenes[0], k=2, categories=["shoes", "handbag"])
    assert [cl.category for cl in asked] == ["shoes", "handbag"] and [cl.present for cl in asked] == [True, False]


@pytest.mark.parametrize("seed", range(5))
def test_presence_filter_keeps_exactly_the_categories_below_the_threshold(retriever, scenes, seed):
    """Any presence probabilities: shown = below the threshold (index order); left out = the rest."""
    rng = np.random.default_rng(seed)
    probs = rng.random(len(retriever.embedder.categories))
    probs[rng.integers(len(probs))] = defaults.PRESENCE_THRESHOLD      # the threshold itself counts as present
    scene = Scene(scenes[0].image, scenes[0].f_s, scenes[0].f_i, presence=torch.tensor(probs, dtype=torch.float32))
    p = {c: float(torch.tensor(probs[retriever.embedder.category_to_index[c]], dtype=torch.float32))
         for c in retriever.categories}
    look = retriever.look(scene, k=2)
    assert [cl.category for cl in look] == [c for c in retriever.categories if p[c] < defaults.PRESENCE_THRESHOLD]
    assert set(look.left_out) == {c for c in retriever.categories if p[c] >= defaults.PRESENCE_THRESHOLD}
    everything = retriever.look(scene, k=2, include_present=True)
    shown = [cl.category for cl in everything]
    assert sorted(shown) == sorted(retriever.categories)
    flags = [cl.present for cl in everything]
    assert flags == sorted(flags)                                        # missing (False) first
    assert all(cl.present == (p[cl.category] >= defaults.PRESENCE_THRESHOLD) for cl in everything)


def test_each_category_is_left_out_by_its_own_presence_threshold(retriever, scenes):
    """Per-category thresholds (fitted on validation into the head): each category against its own."""
    import copy
    names = retriever.embedder.categories
    mine = copy.copy(retriever)
    mine.presence_thresholds = {c: 0.2 + 0.6 * i / max(len(names) - 1, 1) for i, c in enumerate(names)}
    probs = torch.full((len(names),), 0.5)
    scene = Scene(scenes[0].image, scenes[0].f_s, scenes[0].f_i, presence=probs)
    look = mine.look(scene, k=2)
    assert set(look.left_out) == {c for c in retriever.categories if mine.presence_thresholds[c] <= 0.5}
    assert [cl.category for cl in look] == [c for c in retriever.categories if mine.presence_thresholds[c] > 0.5]
    assert set(retriever.presence_thresholds) == set(names)


def test_without_a_presence_head_every_category_is_shown_and_the_retriever_says_why(retriever, scenes):
    look = retriever.look(scenes[0], k=2)
    assert [cl.category for cl in look] == sorted(CATEGORIES) and look.left_out == {}
    assert all(cl.present is None and cl.presence_probability is None for cl in look)
    assert any("no category-presence head" in note for note in retriever.notes)


def test_compatibility_gives_the_exhaustive_distances_and_the_calibrated_verdict(presence_world, world):
    scene = presence_world.encode_scene(world.scenes[1])
    oracle = exhaustive(presence_world, scene)
    ids = [world.product_ids[i] for i in (4, 0, 13, 4)]                  # any order, repeats allowed
    result = presence_world.compatibility(scene, ids)
    assert [c.product_id for c in result] == ids and result.threshold == PLATT.threshold
    for c in result:
        o = oracle[c.product_id]
        assert c.category == o["category"]
        assert (c.global_distance, c.local_distance, c.hybrid_distance) == pytest.approx(
            (o["global"], o["local"], o["hybrid"]), abs=1e-5)
        assert c.probability == pytest.approx(float(PLATT.probability(c.hybrid_distance)))
        assert c.completes == (c.probability >= PLATT.threshold)
    ordered = sorted(result, key=lambda c: c.hybrid_distance)
    assert [c.probability for c in ordered] == sorted([c.probability for c in ordered], reverse=True)
    data = result.to_dict(scene="s.jpg")
    assert data["scene"] == "s.jpg" and data["threshold"] == PLATT.threshold
    assert set(data["products"][0]) == {"product_id", "category", "score", "hybrid_distance", "global_distance",
                                        "local_distance", "probability", "completes_look", "image"}


def test_compatibility_without_a_calibration_gives_distances_only(retriever, scenes, world):
    result = retriever.compatibility(scenes[0], world.product_ids[:2])
    assert result.threshold is None and all(c.probability is None and c.completes is None for c in result)
    assert any("no calibration at" in note for note in retriever.notes)


def test_unknown_product_ids_are_one_line_errors(presence_world, scenes, world):
    with pytest.raises(RetrievalError, match=r"unknown product id 'nope': not in the index of 21 products") as e:
        presence_world.compatibility(scenes[0], [world.product_ids[0], "nope"])
    assert "\n" not in str(e.value)
    with pytest.raises(RetrievalError, match=r"'x0', 'x1', 'x2', 'x3', 'x4' and 2 more"):
        presence_world.compatibility(scenes[0], [f"x{i}" for i in range(7)])
    for bad in ([], "p000"):
        with pytest.raises(RetrievalError, match="one or more product ids"):
            presence_world.compatibility(scenes[0], bad)


def test_a_cohort_calibration_normalises_each_scene_by_its_distances_to_the_cohort(presence_paths, world, tmp_path):
    """The service's factored path (one pass over the cohorts of the asked categories, B scenes at once) against
    the explicit one: each cohort product's hybrid distance one at a time, then (d - mean) / std, then Platt.
    A category the cohort lacks gets no probability rather than an unnormalised one."""
    import shutil

    from pipeline.calibration import Calibrations, Cohort
    from pipeline.distances import hybrid_distance

    ckpt, index_dir = presence_paths
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy2(ckpt, run / "checkpoint.pt")                              # same bytes: same sha256, same index
    rng = np.random.default_rng(3)
    sizes = {"shoes": 5, "hat": 3}                                         # no cohort for "handbag"
    cohort = Cohort({c: tuple(f"c-{c}-{i}" for i in range(m)) for c, m in sizes.items()},
                    {c: rng.normal(0, 0.3, (m, world.model.dim)).astype(np.float32) for c, m in sizes.items()})
    base = Retriever.load(checkpoint=run / "checkpoint.pt", index_dir=index_dir)
    Calibrations(base.checkpoint.sha256, {"hybrid": PLATT}, {}, cohort).save(run / "calibration.json")
    retriever = Retriever.load(checkpoint=run / "checkpoint.pt", index_dir=index_dir)
    embedder = retriever.embedder
    scenes = [retriever.encode_scene(path) for path in world.scenes[:2]]
    ids = [world.product_ids[i] for i in (0, 8, 15, 1, 16)]
    batched = retriever.compatibility_batch(scenes, ids)
    for scene, result in zip(scenes, batched, strict=True):
        assert [c.probability for c in result] == [c.probability for c in retriever.compatibility(scene, ids)]
        for c in result:
            if c.category not in sizes:
                assert c.probability is None and c.completes is None
                continue
            e_c = embedder.category_embeddings(embedder.category_indices([c.category])).view(1, 1, -1)
            with torch.inference_mode():
                cohort_d = np.array([float(hybrid_distance(scene.f_s, scene.f_i, torch.from_numpy(v).view(1, 1, -1),
                                                           e_c)) for v in cohort.vectors[c.category]])
            z = (c.hybrid_distance - cohort_d.mean()) / cohort_d.std()
            assert c.probability == pytest.approx(float(PLATT.probability(z)), abs=1e-6)
            assert c.completes == (c.probability >= PLATT.threshold)
    assert {c.category for c in batched[0]} >= {"shoes", "handbag", "hat"}
