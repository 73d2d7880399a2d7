"""Frozen mode: triplet batches drawn from the pools, and cached features against images through the model."""
import numpy as np
import pytest
import torch

from jobs.training.finetune import image_query_embeddings
from jobs.training.frozen import TripletBatches, cached_query_embeddings
from jobs.training.training_data import Readable, cache_features, prepare_data, trainable_pairs, usable_queries
from pipeline.checkpoint import load_checkpoint
from tests.jobs.training.tiny_run import CFG, copy_run


@pytest.fixture(scope="module")
def cached(trained, sample, tmp_path_factory):
    run = copy_run(trained[0], tmp_path_factory.mktemp("frozen"))
    data = prepare_data(sample, run, CFG)
    cache_features(data, run, CFG, "cpu")
    return run, data


def test_an_epoch_yields_each_trainable_pair_once_with_negatives_from_its_pool(cached):
    _, data = cached
    ds = data.dataset
    pools = trainable_pairs(data, Readable.from_features(data.scenes, data.products))
    categories = ds.categories()
    batches = TripletBatches(data, pools, batch_size=5, negatives=3,
                             category_index={c: i for i, c in enumerate(categories)})
    key_of_row = {data.products.features[i].tobytes(): it.key for i, it in enumerate(data.products.items)}
    sizes, positives, rows = [], [], []
    for scene_maps, pos, neg, cats, _ in batches.epoch(np.random.default_rng(0)):
        b = len(cats)
        sizes.append(b)
        assert scene_maps.shape[0] == pos.shape[0] == neg.shape[0] == b and neg.shape[1] == 3
        for i in range(b):
            positive = key_of_row[pos[i].numpy().tobytes()]
            negatives = [key_of_row[n.numpy().tobytes()] for n in neg[i]]
            positives.append(positive)
            assert categories[int(cats[i])] == ds.products[positive].category
            rows.append((positive, negatives))
    assert sum(sizes) == len(pools) and max(sizes) == 5
    assert sorted(positives) == sorted(ds.pairs[j].product_id for j in pools)
    allowed = {}
    for j, pool in pools.items():
        allowed.setdefault(ds.pairs[j].product_id, set()).update(pool)
    assert all(set(negatives) <= allowed[positive] for positive, negatives in rows)
    first = [t[1].numpy() for t in batches.epoch(np.random.default_rng(0))]
    again = [t[1].numpy() for t in batches.epoch(np.random.default_rng(0))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_shared_negatives_of_a_batch_are_its_products_of_the_scenes_category_not_in_the_scene(cached):
    _, data = cached
    ds = data.dataset
    pools = trainable_pairs(data, Readable.from_features(data.scenes, data.products))
    categories = ds.categories()
    batches = TripletBatches(data, pools, batch_size=6, negatives=3,
                             category_index={c: i for i, c in enumerate(categories)})
    product_of_row = {data.products.features[i].tobytes(): it.key for i, it in enumerate(data.products.items)}
    pair_of_row = {data.scenes.features[i].tobytes(): int(it.key) for i, it in enumerate(data.scenes.items)}
    in_scene = {}
    for pair in ds.pairs:
        in_scene.setdefault(pair.scene_id, set()).add(pair.product_id)
    checked = 0
    for scene_maps, pos, neg, cats, shared in batches.epoch(np.random.default_rng(1)):
        b = len(cats)
        assert shared.shape == (b, b * 4) and shared.dtype == torch.bool
        columns = []
        for i in range(b):   # the column order: pair i's positive, then its 3 negatives
            columns += [product_of_row[pos[i].numpy().tobytes()]]
            columns += [product_of_row[n.numpy().tobytes()] for n in neg[i]]
        for i in range(b):
            pair = ds.pairs[pair_of_row[scene_maps[i].numpy().tobytes()]]
            for m, pid in enumerate(columns):
                expected = ds.products[pid].category == ds.products[pair.product_id].category \
                    and pid not in in_scene[pair.scene_id]
                assert bool(shared[i, m]) == expected, (i, m, pid)
                checked += 1
            assert not shared[i, i * 4] and shared[i, i * 4 + 1: i * 4 + 4].all()   # own positive out, own K in
    assert checked > 0


def test_a_batch_with_shared_negatives_is_scored_against_every_marked_product_of_the_batch(cached):
    from jobs.training.frozen import FrozenHeads
    from pipeline.distances import hybrid_distance

    _, data = cached
    cfg = CFG.replace(negatives_from="batch", negatives=3)
    heads = FrozenHeads(cfg, data, torch.device("cpu"))
    embedder, _ = heads.build()
    embedder.eval()    # no dropout: the loss and the loop below see the same embeddings
    pools = trainable_pairs(data, Readable.from_features(data.scenes, data.products))
    batch = next(iter(heads.epoch_batches(embedder, pools, 0)))
    scene_maps, pos, neg, cats, shared = batch
    with torch.no_grad():
        loss, n = heads.batch_loss(embedder, batch)
        f_s, f_i = embedder.scene_from_features(scene_maps.float())
        f_p = torch.cat([embedder.product_from_features(pos.float()).unsqueeze(1),
                         embedder.product_from_features(neg.float().flatten(0, 1)).reshape(len(cats), 3, -1)], 1)
        f_p = f_p.reshape(-1, f_p.shape[-1])
        column_cats = cats.repeat_interleave(4)
        terms = []
        for b in range(len(cats)):
            cols = [b * 4] + [m for m in range(len(f_p)) if shared[b, m]]
            d = hybrid_distance(f_s[b:b + 1], f_i[b:b + 1], f_p[cols].unsqueeze(0),
                                embedder.category_embeddings(column_cats[cols]).unsqueeze(0))[0]
            terms.append(float(-torch.log_softmax(-d / cfg.temperature, dim=0)[0]))
    assert n == len(cats) and int(shared.sum()) > 3 * len(cats)   # more than each pair's own 3 negatives
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_cached_features_give_the_same_embeddings_as_images_through_the_model(cached):
    run, data = cached
    full = load_checkpoint(run / "checkpoint.pt").embedder
    readable = Readable.from_features(data.scenes, data.products)
    queries = usable_queries(data, data.test_pairs + data.val_pairs, CFG.seed, readable)[:4]
    from_cache = cached_query_embeddings(full, data, queries)
    from_images = image_query_embeddings(full, data, queries, exclusion=CFG.exclusion, device=torch.device("cpu"))
    assert torch.allclose(from_cache.scene_global, from_images.scene_global, atol=2e-2)
    assert torch.allclose(from_cache.scene_regions, from_images.scene_regions, atol=2e-2)
    for pid, row in from_images.product_index.items():
        assert torch.allclose(
            from_cache.product_emb[from_cache.product_index[pid]], from_images.product_emb[row], atol=2e-2
        )
        assert torch.equal(from_cache.product_pooled[from_cache.product_index[pid]], from_images.product_pooled[row])
    assert torch.equal(from_cache.scene_pooled, from_images.scene_pooled)
