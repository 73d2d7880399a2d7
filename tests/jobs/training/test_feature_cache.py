"""The frozen-backbone feature cache: rows equal the backbone on the prepared image, resume by parts, bad images."""
import numpy as np
import pytest
import torch
from PIL import Image

from jobs.training import feature_cache
from jobs.training.feature_cache import CacheItem, augment, compute_features, decodable, prepare
from tests.helpers import random_embedder


@pytest.fixture(scope="module")
def backbone():
    return random_embedder(["any"], dim=4).backbone


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    return paths, str(broken)


def _items(paths):
    return [CacheItem("a", paths[0]), CacheItem("a", paths[0], None, 7),
            CacheItem("s", paths[1], (0.2, 0.2, 0.6, 0.7)), CacheItem("t", paths[2], (0.0, 0.5, 1.0, 1.0), 3)]


@pytest.mark.parametrize("keep_map", [True, False])
def test_cached_rows_are_the_backbone_on_the_prepared_image(images, backbone, tmp_path, keep_map):
    items = _items(images[0])
    table = compute_features(items, backbone, tmp_path / "cache", keep_map=keep_map, exclusion="mask", workers=0)
    with torch.no_grad():
        fmap = backbone(torch.stack([prepare(it, backbone.input_size, "mask") for it in items]))
    expected = (fmap if keep_map else fmap.mean(dim=(2, 3))).numpy()
    assert table.features.dtype == np.float16 and table.features.shape == expected.shape
    np.testing.assert_allclose(table.features.astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    assert table.valid.all() and table.rows_by_key() == {"a": [0, 1], "s": [2], "t": [3]}


def test_unreadable_images_are_invalid_rows_and_decodable_agrees(images, backbone, tmp_path):
    paths, broken = images
    items = [CacheItem("a", paths[0]), CacheItem("b", broken), CacheItem("c", str(tmp_path / "missing.jpg"))]
    table = compute_features(items, backbone, tmp_path / "cache", keep_map=False, workers=0)
    assert table.valid.tolist() == [True, False, False]
    assert decodable(items, backbone.input_size, "mask").tolist() == [True, False, False]
    assert table.rows_by_key() == {"a": [0]}


def test_an_interrupted_cache_resumes_by_parts_and_other_items_start_over(images, backbone, tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "PART_SIZE", 2)
    seen = []
    hook = backbone.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    try:
        items = _items(images[0])
        first = compute_features(items, backbone, tmp_path / "cache", keep_map=False, workers=0)
        assert sum(seen) == 4 and len(list((tmp_path / "cache").glob("part-*.npz"))) == 2
        (tmp_path / "cache" / "part-00001.npz").unlink()          # interrupted before the second part
        seen.clear()
        again = compute_features(items, backbone, tmp_path / "cache", keep_map=False, workers=0)
        assert sum(seen) == 2 and np.array_equal(again.features, first.features)
        seen.clear()
        other = [*items[:3], CacheItem("t", items[3].image_path, items[3].bbox, 4)]   # another view seed
        compute_features(other, backbone, tmp_path / "cache", keep_map=False, workers=0)
        assert sum(seen) == 4
    finally:
        hook.remove()


def test_augmentation_is_seeded():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    assert augment(img, 3).tobytes() == augment(img, 3).tobytes()
    assert augment(img, 3).tobytes() != augment(img, 4).tobytes()


def test_the_traced_graph_caches_the_eager_features_and_a_cache_is_made_by_one_of_them(images, backbone, tmp_path):
    items = _items(images[0])
    eager = compute_features(items, backbone, tmp_path / "eager", keep_map=True, workers=0, trace=False)
    seen = []
    hook = backbone.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    try:
        traced = compute_features(items, backbone, tmp_path / "traced", keep_map=True, workers=0, trace=True)
    finally:
        hook.remove()
    assert seen == [1]                  # the module ran once, to be traced; the rows came from the graph
    assert traced.valid.tolist() == eager.valid.tolist()
    # float16 rows: equal to one float16 step of the feature's size (the graph differs from eager in the last bits)
    np.testing.assert_allclose(traced.features.astype(np.float32), eager.features.astype(np.float32),
                               rtol=2e-3, atol=2e-3)
    seen.clear()
    hook = backbone.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    try:
        again = compute_features(items, backbone, tmp_path / "traced", keep_map=True, workers=0, trace=False)
    finally:
        hook.remove()
    assert sum(seen) == len(items)      # the eager run does not take the traced cache for its own
    assert np.array_equal(again.features, eager.features)
