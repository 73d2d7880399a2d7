"""A run's data: the dataset, its scene split, training negatives, image views and which images decode."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.errors import InputError
from common.seeds import seed_from_key
from jobs.data.datasets import load_dataset
from jobs.data.splits import SceneSplit, hold_out_same
from jobs.training.config import TrainConfig
from jobs.training.feature_cache import CacheItem, FeatureTable, compute_features, decodable
from jobs.training.run_layout import RunLayout
from pipeline.backbones import build_backbone
from pipeline.evaluation import Query, build_queries
from pipeline.negatives import negative_pools


@dataclass
class TrainingData:
    """The dataset, its split and (frozen mode, evaluation) the cached backbone features."""

    dataset: object
    split: SceneSplit
    train_pairs: list[int]
    val_pairs: list[int]
    test_pairs: list[int]
    scenes: FeatureTable | None = None     # rows keyed by pair index (str), maps
    products: FeatureTable | None = None   # rows keyed by product id, pooled
    negatives_pool: dict = field(default_factory=dict)   # pair index -> candidate negative product ids


def hold_out_like(cfg: TrainConfig, data_dir, out_dir) -> TrainConfig:
    """With `cfg.hold_out_from`, write `out_dir`'s split (that run's validation and test scenes, every other
    scene of `data_dir` for training) and return the config with that run's data seed, so that this run's
    queries are that run's; without it, `cfg` as it is.

    Training calls it once; evaluation reads the split written here (the data seed matches it).
    """
    if not cfg.hold_out_from:
        return cfg
    held = RunLayout(cfg.hold_out_from).read_split()
    if not Path(data_dir).is_dir():
        raise InputError(f"{data_dir}: no such dataset folder")
    split = hold_out_same(held, [p.scene_id for p in load_dataset(data_dir).pairs])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    split.write(RunLayout(out_dir).split)
    return cfg.replace(data_seed=split.seed)


def prepare_data(data_dir, out_dir, cfg: TrainConfig) -> TrainingData:
    """Load the dataset, split its scenes (split.json in `out_dir`) and pool each training pair's negatives."""
    if not Path(data_dir).is_dir():
        raise InputError(f"{data_dir}: no such dataset folder (make sample-data writes data/sample)")
    dataset = load_dataset(data_dir)
    if not dataset.pairs:
        raise InputError(f"{data_dir}: the dataset has no usable scene-product pairs")
    split = RunLayout(out_dir).split_for([p.scene_id for p in dataset.pairs], seed=cfg.split_seed)
    part_of = {s: name for name, ids in split.items() for s in ids}
    parts = {"train": [], "val": [], "test": []}
    for j, pair in enumerate(dataset.pairs):
        parts[part_of[pair.scene_id]].append(j)
    # Training negatives come from the positives of *training* scenes only. Were they drawn from the
    # whole catalogue, the products of validation/test scenes (never a positive in training) would only
    # ever be pushed away from scenes, and the heads would learn "was this product in a training scene?"
    # instead of compatibility: held-out positives then rank below chance.
    train_products = {dataset.pairs[j].product_id for j in parts["train"]}
    pools = {j: pool for j, pool in negative_pools(dataset, parts["train"], train_products).items() if pool}
    return TrainingData(dataset, split, [j for j in parts["train"] if j in pools], parts["val"], parts["test"],
                        negatives_pool=pools)


# -- image views ---------------------------------------------------------------------------------

def view_seed(seed: int, kind: str, key: str, view: int) -> int:
    """The augmentation seed of one view (the key format fixes the cache's fingerprint: keep it)."""
    return seed_from_key(f"{seed}|{kind}|{key}|{view}", bits=32)


def scene_view(dataset, j: int, augment_seed: int | None = None) -> CacheItem:
    """Pair `j`'s scene with its product left out, clean (seed None) or augmented."""
    pair = dataset.pairs[j]
    return CacheItem(str(j), str(dataset.scenes[pair.scene_id]), tuple(pair.bbox), augment_seed)


def product_view(dataset, pid: str, augment_seed: int | None = None) -> CacheItem:
    return CacheItem(pid, str(dataset.products[pid].image_path), None, augment_seed)


def cache_features(data: TrainingData, out_dir, cfg: TrainConfig, device) -> None:
    """Fill `data.scenes` and `data.products` from the frozen backbone (computed once, then read from disk).

    Every pair's clean scene and every product's clean image, plus `scene_views` / `product_views`
    augmented views of the training scenes and positives.
    """
    ds = data.dataset
    backbone = build_backbone(name=cfg.backbone, weights=cfg.backbone_weights)
    train_set = set(data.train_pairs)
    scene_items = []
    for j in range(len(ds.pairs)):
        scene_items.append(scene_view(ds, j))
        if j in train_set:
            scene_items += [scene_view(ds, j, view_seed(cfg.split_seed, "scene", str(j), v))
                            for v in range(cfg.scene_views)]
    positives = {ds.pairs[j].product_id for j in data.train_pairs}
    product_items = []
    for pid in sorted(ds.products):
        product_items.append(product_view(ds, pid))
        if pid in positives:
            product_items += [product_view(ds, pid, view_seed(cfg.split_seed, "product", pid, v))
                              for v in range(cfg.product_views)]
    cache = Path(out_dir) / "cache"
    common = {"exclusion": cfg.exclusion, "workers": cfg.workers, "device": str(device)}
    data.products = compute_features(product_items, backbone, cache / "products", keep_map=False,
                                     desc="product features", **common)
    data.scenes = compute_features(scene_items, backbone, cache / "scenes", keep_map=True,
                                   desc="scene features", **common)


# -- which images decode: one filter for training pairs and queries, in both modes ----------------

@dataclass(frozen=True)
class Readable:
    """The clean scene views (keyed by pair index, as text) and the products whose images decode."""

    scenes: frozenset[str]
    products: frozenset[str]

    @classmethod
    def from_features(cls, scenes: FeatureTable, products: FeatureTable) -> Readable:
        """Read off the feature cache: a row is valid when its image decoded."""
        return cls(frozenset(clean_rows(scenes)), frozenset(clean_rows(products)))

    @classmethod
    def scan(cls, data: TrainingData, pair_indices, *, size: int, exclusion: str, workers: int = 0) -> Readable:
        """Decode the clean views of `pair_indices`' scenes and of every product (no backbone run)."""
        ds = data.dataset
        scene_items = [scene_view(ds, j) for j in sorted(set(pair_indices))]
        product_items = [product_view(ds, pid) for pid in sorted(ds.products)]
        scene_ok = decodable(scene_items, size, exclusion, workers=workers)
        product_ok = decodable(product_items, size, exclusion, workers=workers)
        return cls(frozenset(it.key for it, ok in zip(scene_items, scene_ok, strict=True) if ok),
                   frozenset(it.key for it, ok in zip(product_items, product_ok, strict=True) if ok))


def clean_rows(table: FeatureTable) -> dict[str, int]:
    """key -> the row of its un-augmented view, for the rows whose image decoded."""
    return {it.key: i for i, it in enumerate(table.items) if it.augment_seed is None and table.valid[i]}


def usable_queries(data: TrainingData, pair_indices, seed: int, readable: Readable) -> list[Query]:
    """The protocol's queries for `pair_indices`, less those whose scene or any candidate does not decode."""
    queries = build_queries(data.dataset, pair_indices, seed=seed)
    return [q for q in queries if str(q.pair_index) in readable.scenes
            and all(p in readable.products for p in (q.product_id, *q.rank_negatives))]


def trainable_pairs(data: TrainingData, readable: Readable) -> dict[int, list[str]]:
    """Training pair -> its negatives pool, both restricted to images that decode; pairs left without
    negatives are dropped. Keys follow `data.train_pairs`."""
    pools = {}
    for j in data.train_pairs:
        if str(j) in readable.scenes and data.dataset.pairs[j].product_id in readable.products:
            pool = [p for p in data.negatives_pool[j] if p in readable.products]
            if pool:
                pools[j] = pool
    return pools
