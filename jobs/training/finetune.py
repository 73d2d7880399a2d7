"""Fine-tune mode: backbone and heads train end to end on triplets of images (bfloat16, channels_last on a GPU)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from jobs.training.config import TrainConfig
from jobs.training.feature_cache import CacheItem, prepare
from jobs.training.strategy import StepStrategy, ranking_loss
from jobs.training.training_data import Readable, TrainingData, clean_rows, product_view, scene_view, view_seed
from pipeline.backbones import Backbone, pooled
from pipeline.embedder import StyleEmbedder, build_embedder
from pipeline.evaluation import Query, QueryEmbeddings
from pipeline.negatives import draw_negatives


class TripletImages(Dataset):
    """Epoch-seeded triplets of images: augmented scene view, augmented positive, K augmented negatives."""

    def __init__(self, data: TrainingData, pools: dict[int, list[str]], cfg: TrainConfig,
                 category_index: dict[str, int], epoch: int, size: int):
        self.data, self.pools, self.cfg, self.category_index = data, pools, cfg, category_index
        self.epoch, self.size = epoch, size
        self.pairs = list(pools)

    def __len__(self) -> int:
        return len(self.pairs)

    def _view(self, item: CacheItem) -> torch.Tensor:
        return prepare(item, self.size, self.cfg.exclusion)

    def __getitem__(self, i: int):
        ds, cfg, j = self.data.dataset, self.cfg, self.pairs[i]
        pid = ds.pairs[j].product_id
        rng = np.random.default_rng(view_seed(cfg.seed, "triplet", str(j), self.epoch))
        scene = self._view(scene_view(ds, j, view_seed(cfg.seed, "scene", str(j), self.epoch)))
        # Negatives get the same augmentation as the positive, so "augmented" never marks the positive.
        products = [self._view(product_view(ds, p, view_seed(cfg.seed, "product", p, self.epoch)))
                    for p in (pid, *draw_negatives(rng, self.pools[j], cfg.negatives))]
        return scene, torch.stack(products), self.category_index[ds.products[pid].category]


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def _encode(items: list[CacheItem], encode, *, size: int, exclusion: str, device: torch.device, batch_size: int):
    outs = []
    for start in range(0, len(items), batch_size):
        batch = torch.stack([prepare(it, size, exclusion) for it in items[start:start + batch_size]])
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            outs.append(encode(_to_device(batch, device)))
    return outs


def image_query_embeddings(embedder: StyleEmbedder, data: TrainingData, queries: list[Query], *, exclusion: str,
                           device: torch.device, batch_size: int = 64) -> QueryEmbeddings:
    """Query and candidate embeddings through the (fine-tuned) backbone, clean views.

    The untrained baseline's pooled features come from the feature cache when it was computed
    (evaluation computes it); training's validation scores only the hybrid method and leaves them zero.
    """
    ds = data.dataset
    pids = sorted({p for q in queries for p in (q.product_id, *q.rank_negatives)})
    how = {"size": embedder.backbone.input_size, "exclusion": exclusion, "device": device, "batch_size": batch_size}
    was_training = embedder.training
    embedder.eval()
    scene_out = _encode([scene_view(ds, q.pair_index) for q in queries], embedder.encode_scenes, **how)
    f_s = torch.cat([a for a, _ in scene_out]).float().cpu()
    f_i = torch.cat([b for _, b in scene_out]).float().cpu()
    f_p = torch.cat(_encode([product_view(ds, p) for p in pids], embedder.encode_products, **how)).float().cpu()
    embedder.train(was_training)
    scene_pooled = torch.zeros(len(queries), embedder.channels)
    product_pooled = torch.zeros(len(pids), embedder.channels)
    if data.scenes is not None and data.products is not None:
        srows, prows = clean_rows(data.scenes), clean_rows(data.products)
        scene_pooled = pooled(
            torch.from_numpy(data.scenes.features[[srows[str(q.pair_index)] for q in queries]]).float()
        )
        product_pooled = torch.from_numpy(data.products.features[[prows[p] for p in pids]]).float()
    return QueryEmbeddings(f_s, f_i, scene_pooled, {p: i for i, p in enumerate(pids)}, f_p, product_pooled)


class FineTune(StepStrategy):
    """Backbone and heads together on the device; images are decoded and augmented every epoch."""

    name = "finetune"
    trains_backbone = True

    def __init__(self, cfg, data, device):
        super().__init__(cfg, data, device)
        # Decoding is the wall here (design notes: ~1,000 img/s with PIL on 14 workers), hence more
        # workers than the feature cache's CPU policy.
        self.workers = cfg.workers if cfg.workers is not None else min(8, max(1, (torch.get_num_threads() or 2) - 1))

    def prepare(self, out_dir) -> Readable:
        data = self.data
        return Readable.scan(data, data.train_pairs + data.val_pairs, size=Backbone.input_size,
                             exclusion=self.cfg.exclusion, workers=self.workers)

    def build(self):
        cfg = self.cfg
        embedder = build_embedder(categories=self.data.dataset.categories(), backbone=cfg.backbone,
                                  backbone_weights=cfg.backbone_weights, dim=cfg.dim, hidden=cfg.hidden,
                                  dropout=cfg.dropout, freeze_backbone=False,
                                  learn_sharpness=cfg.attention == "sharpness")
        embedder = embedder.to(self.device).to(memory_format=torch.channels_last)
        head_params = [p for n, p in embedder.named_parameters() if not n.startswith("backbone.")]
        optimizer = torch.optim.AdamW([{"params": embedder.backbone.parameters(), "lr": cfg.backbone_lr},
                                       {"params": head_params, "lr": cfg.lr}], weight_decay=cfg.weight_decay)
        return embedder, optimizer

    def epoch_batches(self, embedder, pools, epoch):
        cfg = self.cfg
        triplets = TripletImages(self.data, pools, cfg, embedder.category_to_index, epoch, embedder.backbone.input_size)
        return DataLoader(triplets, batch_size=cfg.batch_size, shuffle=True, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", drop_last=len(pools) > cfg.batch_size,
                          generator=torch.Generator().manual_seed(cfg.seed + epoch))

    def batch_loss(self, embedder, batch):
        scenes, products, cats = batch
        b, m = products.shape[:2]
        with torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
            f_s, f_i = embedder.encode_scenes(_to_device(scenes, self.device))
            f_p = embedder.encode_products(_to_device(products.flatten(0, 1), self.device)).reshape(b, m, -1)
            e_c = embedder.category_embeddings(cats.to(self.device))
        return ranking_loss(f_s, f_i, f_p, e_c, self.cfg), b

    def query_embeddings(self, embedder, queries):
        return image_query_embeddings(embedder, self.data, queries, exclusion=self.cfg.exclusion, device=self.device)
