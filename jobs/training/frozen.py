"""Frozen-backbone mode: the heads train on cached backbone features (minutes on a CPU for the sample)."""
from __future__ import annotations

import numpy as np
import torch

from jobs.training.strategy import StepStrategy, ranking_loss, shared_ranking_loss
from jobs.training.training_data import Readable, TrainingData, cache_features, clean_rows
from pipeline.backbones import pooled
from pipeline.distances import hybrid_distance
from pipeline.embedder import StyleEmbedder, build_embedder
from pipeline.evaluation import Query, QueryEmbeddings
from pipeline.negatives import draw_mined, draw_negatives, nearest_negatives


class TripletBatches:
    """Seeded batches of (scene view, positive view, K same-category negatives) as cached-feature rows, with the
    batch's shared-negatives mask (B x B(1 + K): which of the batch's products each scene may rank against)."""

    def __init__(self, data: TrainingData, pools: dict[int, list[str]], batch_size: int, negatives: int,
                 category_index: dict[str, int]):
        self.data, self.pools = data, pools
        self.batch_size, self.negatives, self.category_index = batch_size, negatives, category_index
        self.pairs = list(pools)
        self.scene_rows = data.scenes.rows_by_key()
        self.product_rows = data.products.rows_by_key()
        ds = data.dataset
        self.product_number = {pid: i for i, pid in enumerate(sorted(ds.products))}
        in_scene: dict[str, list[int]] = {}
        for pair in ds.pairs:
            in_scene.setdefault(pair.scene_id, []).append(self.product_number[pair.product_id])
        self.scene_products = {j: np.array(in_scene[ds.pairs[j].scene_id]) for j in self.pairs}

    def epoch(self, rng: np.random.Generator, hard: dict[int, list[str]] | None = None):
        """One epoch's batches; `hard` (pair -> mined negatives): half of each pair's negatives come from it."""
        ds = self.data.dataset
        order = rng.permutation(len(self.pairs))
        for start in range(0, len(order), self.batch_size):
            batch = [self.pairs[i] for i in order[start:start + self.batch_size]]
            scene_rows, pos_rows, neg_rows, cats, columns = [], [], [], [], []
            for j in batch:
                pid = ds.pairs[j].product_id
                scene_rows.append(rng.choice(self.scene_rows[str(j)]))
                pos_rows.append(rng.choice(self.product_rows[pid]))
                # Negatives are drawn from the same views (clean or augmented) as positives: were
                # positives the only augmented products, "looks augmented" would separate them.
                negatives = draw_negatives(rng, self.pools[j], self.negatives) if hard is None else \
                    draw_mined(rng, self.pools[j], hard[j], self.negatives)
                neg_rows.append([rng.choice(self.product_rows[p]) for p in negatives])
                cats.append(self.category_index[ds.products[pid].category])
                columns.extend(self.product_number[p] for p in [pid, *negatives])
            yield (torch.from_numpy(self.data.scenes.features[scene_rows]),
                   torch.from_numpy(self.data.products.features[pos_rows]),
                   torch.from_numpy(self.data.products.features[np.array(neg_rows)]),
                   torch.tensor(cats),
                   torch.from_numpy(self.shared_negatives(batch, np.array(cats), np.array(columns))))

    def shared_negatives(self, batch: list[int], cats: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """B x B(1 + K) booleans: product column m (pair m // (1 + K)'s positive, then its K negatives) is a
        negative for scene b when it is of b's positive's category and not in b's scene. The positive itself is in
        the scene, so it never is; the pair's own K negatives always are (drawn from the same rule)."""
        per_pair = len(columns) // len(batch)
        column_category = np.repeat(cats, per_pair)
        mask = cats[:, None] == column_category[None, :]
        for b, j in enumerate(batch):
            mask[b] &= ~np.isin(columns, self.scene_products[j])
        return mask


def triplet_step(embedder: StyleEmbedder, scene_maps, pos_feats, neg_feats, cats, cfg,
                 shared: torch.Tensor | None = None) -> torch.Tensor:
    """The ranking loss of one batch (features in, scalar loss out; jobs.training.strategy.ranking_loss, or
    shared_ranking_loss over every product of the batch when cfg.shares_negatives)."""
    b, k = neg_feats.shape[:2]
    f_s, f_i = embedder.scene_from_features(scene_maps)
    # Positives, then negatives: two calls, so each draws its own dropout mask in this order.
    f_pos = embedder.product_from_features(pos_feats)
    f_neg = embedder.product_from_features(neg_feats.reshape(b * k, *neg_feats.shape[2:])).reshape(b, k, -1)
    f_p = torch.cat([f_pos.unsqueeze(1), f_neg], dim=1)
    if cfg.shares_negatives:
        if shared is None:
            raise ValueError("shared negatives need the batch's shared-negatives mask")
        e_k = embedder.category_embeddings(torch.arange(len(embedder.categories)))
        return shared_ranking_loss(f_s, f_i, f_p.reshape(b * (1 + k), -1), e_k, cats.repeat_interleave(1 + k),
                                   torch.arange(b) * (1 + k), shared, cfg)
    return ranking_loss(f_s, f_i, f_p, embedder.category_embeddings(cats), cfg)


def mine_hard_pools(embedder: StyleEmbedder, data: TrainingData, pools: dict[int, list[str]], hardest: int,
                    chunk: int = 64) -> dict[int, list[str]]:
    """Each training pair's `hardest` nearest wrong products (its pool) by the model's own hybrid distance,
    from the clean cached views (eval mode, no gradient: nothing is drawn from any random stream)."""
    scene_rows, product_rows = clean_rows(data.scenes), clean_rows(data.products)
    pids = sorted({p for pool in pools.values() for p in pool})
    column = {p: i for i, p in enumerate(pids)}
    ds, pairs, distances = data.dataset, list(pools), {}
    was_training = embedder.training
    embedder.eval()
    with torch.no_grad():
        f_p = embedder.product_from_features(torch.from_numpy(data.products.features[[product_rows[p] for p in pids]]))
        for start in range(0, len(pairs), chunk):
            batch = pairs[start:start + chunk]
            maps = torch.from_numpy(data.scenes.features[[scene_rows[str(j)] for j in batch]])
            f_s, f_i = embedder.scene_from_features(maps)
            cats = embedder.category_indices([ds.products[ds.pairs[j].product_id].category for j in batch])
            e_c = embedder.category_embeddings(cats)
            for b, j in enumerate(batch):
                cols = [column[p] for p in pools[j]]
                d = hybrid_distance(f_s[b:b + 1], f_i[b:b + 1], f_p[cols].unsqueeze(0),
                                    e_c[b].expand(len(cols), -1).unsqueeze(0))
                distances[j] = d[0].numpy()
    embedder.train(was_training)
    return nearest_negatives(pools, distances, hardest)


def cached_query_embeddings(embedder: StyleEmbedder, data: TrainingData, queries: list[Query]) -> QueryEmbeddings:
    """Query and product embeddings for evaluation, from the clean cached views."""
    scene_rows = clean_rows(data.scenes)
    product_rows = clean_rows(data.products)
    maps = torch.from_numpy(data.scenes.features[[scene_rows[str(q.pair_index)] for q in queries]])
    pids = sorted(product_rows)
    prod = torch.from_numpy(data.products.features[[product_rows[p] for p in pids]])
    was_training = embedder.training
    embedder.eval()
    with torch.no_grad():
        f_s, f_i = embedder.scene_from_features(maps)
        f_p = embedder.product_from_features(prod)
    embedder.train(was_training)
    return QueryEmbeddings(f_s, f_i, pooled(maps.float()), {p: i for i, p in enumerate(pids)}, f_p, prod.float())


class FrozenHeads(StepStrategy):
    """Heads only, on the CPU, over features the frozen backbone computed once (the feature cache)."""

    name = "train"
    trains_backbone = False

    def __init__(self, cfg, data, device):
        super().__init__(cfg, data, device)
        self.rng = np.random.default_rng(cfg.seed)
        self._batches: TripletBatches | None = None

    def prepare(self, out_dir) -> Readable:
        cache_features(self.data, out_dir, self.cfg, self.device)
        return Readable.from_features(self.data.scenes, self.data.products)

    def build(self):
        cfg = self.cfg
        embedder = build_embedder(categories=self.data.dataset.categories(), backbone=cfg.backbone,
                                  backbone_weights=cfg.backbone_weights, with_backbone=False, dim=cfg.dim,
                                  hidden=cfg.hidden, dropout=cfg.dropout,
                                  learn_sharpness=cfg.attention == "sharpness")
        return embedder, torch.optim.AdamW(embedder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def epoch_batches(self, embedder, pools, epoch):
        if self._batches is None or self._batches.pools is not pools:
            self._batches = TripletBatches(self.data, pools, self.cfg.batch_size, self.cfg.negatives,
                                           embedder.category_to_index)
        cfg = self.cfg
        hard = None
        if cfg.mining == "hard" and epoch >= cfg.warmup_epochs:   # random negatives while the model is still raw
            hard = mine_hard_pools(embedder, self.data, pools, cfg.hard_pool)
        return self._batches.epoch(self.rng, hard)

    def batch_loss(self, embedder, batch):
        scene_maps, pos, neg, cats, shared = batch
        return triplet_step(embedder, scene_maps.float(), pos.float(), neg.float(), cats, self.cfg, shared), len(cats)

    def query_embeddings(self, embedder, queries):
        return cached_query_embeddings(embedder, self.data, queries)

    def rng_state(self):
        return self.rng.bit_generator.state

    def load_rng_state(self, state) -> None:
        self.rng.bit_generator.state = state
