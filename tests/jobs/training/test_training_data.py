"""A run's data: the split and training negatives, view seeds, and one readability filter for both modes."""
import hashlib
import shutil

import pytest
from torch import nn

from common.errors import InputError
from jobs.data.datasets import DatasetError
from jobs.training import training_data
from jobs.training.training_data import (
    Readable,
    cache_features,
    prepare_data,
    trainable_pairs,
    usable_queries,
    view_seed,
)
from pipeline.backbones import Backbone
from tests.jobs.training.tiny_run import CFG


def test_training_negatives_are_training_positives_of_the_category_outside_the_scene(sample, tmp_path):
    data = prepare_data(sample, tmp_path, CFG)
    ds = data.dataset
    assert sorted(data.train_pairs + data.val_pairs + data.test_pairs) == list(range(len(ds.pairs)))
    train_positives = {ds.pairs[j].product_id for j in data.train_pairs}
    for j in data.train_pairs:
        pair = ds.pairs[j]
        in_scene = {p.product_id for p in ds.pairs if p.scene_id == pair.scene_id}
        pool = data.negatives_pool[j]
        assert pool and set(pool) <= train_positives - in_scene
        assert {ds.products[p].category for p in pool} == {ds.products[pair.product_id].category}


def test_a_missing_or_foreign_folder_is_one_of_the_projects_errors(tmp_path):
    with pytest.raises(InputError, match="no such dataset folder"):
        prepare_data(tmp_path / "nope", tmp_path / "run", CFG)
    with pytest.raises(DatasetError, match="not a dataset dir"):
        prepare_data(tmp_path, tmp_path / "run", CFG)


def test_view_seeds_keep_their_key_format():
    # The key format fixes the cache's fingerprint and every augmented view: a refactor must not change it.
    assert view_seed(0, "scene", "3", 1) == int.from_bytes(hashlib.sha256(b"0|scene|3|1").digest()[:4], "little")


def _tiny_backbone(**_):
    """A 4-channel stand-in: readability depends on decoding only, and this keeps the cache quick."""
    trunk = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Conv2d(3, 4, 1))
    return Backbone(trunk, name="tiny", channels=4, mean=(0.5,) * 3, std=(0.25,) * 3, weights="random")


def test_both_modes_leave_out_the_same_unreadable_images(sample, tmp_path, monkeypatch):
    monkeypatch.setattr(training_data, "build_backbone", _tiny_backbone)
    broken = tmp_path / "sample"
    shutil.copytree(sample, broken)
    data = prepare_data(broken, tmp_path / "run", CFG)
    ds = data.dataset
    bad_pair = data.val_pairs[0]
    bad_scene = ds.pairs[bad_pair].scene_id
    bad_product = data.negatives_pool[data.train_pairs[0]][0]
    ds.scenes[bad_scene].write_bytes(b"not an image")
    ds.products[bad_product].image_path.write_bytes(b"not an image")

    cache_features(data, tmp_path / "run", CFG, "cpu")
    cached = Readable.from_features(data.scenes, data.products)     # frozen mode and evaluation
    scanned = Readable.scan(data, range(len(ds.pairs)), size=Backbone.input_size, exclusion=CFG.exclusion)
    assert scanned == cached                                         # fine-tune mode
    unreadable = {str(j) for j, p in enumerate(ds.pairs) if p.scene_id == bad_scene}
    assert cached.scenes == {str(j) for j in range(len(ds.pairs))} - unreadable
    assert cached.products == set(ds.products) - {bad_product}

    queries = usable_queries(data, data.val_pairs, CFG.seed, cached)
    assert queries == usable_queries(data, data.val_pairs, CFG.seed, scanned)
    assert queries and bad_pair not in {q.pair_index for q in queries}
    assert all(bad_product not in (q.product_id, *q.rank_negatives) for q in queries)
    pools = trainable_pairs(data, cached)
    assert pools == trainable_pairs(data, scanned)
    assert pools and all(bad_product not in pool for pool in pools.values())
    assert all(ds.pairs[j].product_id != bad_product and str(j) not in unreadable for j in pools)
