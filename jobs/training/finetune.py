"""End-to-end fine-tuning of backbone and heads on triplets of images (mixed precision, channels_last on GPU)."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common.files import write_json_atomic
from jobs.evaluation.evaluate import QueryEmbeddings, score_queries
from jobs.training.feature_cache import CacheItem, prepare
from jobs.training.train import (
    TrainConfig,
    _view_seed,
    category_lookup,
    prepare_data,
    resolve_device,
    seed_everything,
    selection_score,
    set_epoch_lr,
)
from pipeline.checkpoint import save_checkpoint
from pipeline.distances import hybrid_distance, triplet_loss
from pipeline.embedder import build_embedder


class TripletImages(Dataset):
    """Epoch-seeded triplets of images: augmented scene view, augmented positive, K augmented negatives."""

    def __init__(self, data, cfg: TrainConfig, category_index: dict[str, int], epoch: int, size: int):
        self.data, self.cfg, self.category_index, self.epoch, self.size = data, cfg, category_index, epoch, size
        self.pairs = list(data.train_pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        ds, cfg, j = self.data.dataset, self.cfg, self.pairs[i]
        pair = ds.pairs[j]
        rng = np.random.default_rng(_view_seed(cfg.seed, "triplet", str(j), self.epoch))
        scene = prepare(CacheItem(str(j), str(ds.scenes[pair.scene_id]), tuple(pair.bbox),
                                  _view_seed(cfg.seed, "scene", str(j), self.epoch)), self.size, cfg.exclusion)
        pos = prepare(CacheItem(pair.product_id, str(ds.products[pair.product_id].image_path), None,
                                _view_seed(cfg.seed, "product", pair.product_id, self.epoch)), self.size, cfg.exclusion)
        pool = self.data.negatives_pool[j]
        picks = rng.choice(len(pool), size=cfg.negatives, replace=len(pool) < cfg.negatives)
        # Negatives get the same augmentation as the positive, so "augmented" never marks the positive.
        negs = [prepare(CacheItem(pool[k], str(ds.products[pool[k]].image_path), None,
                                  _view_seed(cfg.seed, "product", pool[k], self.epoch)), self.size, cfg.exclusion)
                for k in picks]
        cat = self.category_index[ds.products[pair.product_id].category]
        return scene, torch.stack([pos, *negs]), cat


def _to_device(x: torch.Tensor, device: str) -> torch.Tensor:
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def embeddings_from_images(embedder, data, queries, cfg: TrainConfig, device: str, batch_size: int = 64) -> QueryEmbeddings:
    """Query and candidate embeddings through the (fine-tuned) backbone, clean views."""
    ds = data.dataset
    pids = sorted({p for q in queries for p in (q.product_id, *q.rank_negatives)})
    size = embedder.backbone.input_size
    embedder.eval()

    def run(items, fn):
        outs = []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([prepare(it, size, cfg.exclusion) for it in items[start:start + batch_size]])
            with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
                outs.append(fn(_to_device(batch, device)))
        return outs

    scene_items = [CacheItem(str(q.pair_index), str(ds.scenes[ds.pairs[q.pair_index].scene_id]),
                             tuple(ds.pairs[q.pair_index].bbox)) for q in queries]
    scene_out = run(scene_items, embedder.encode_scenes)
    f_s = torch.cat([a for a, _ in scene_out]).float().cpu()
    f_i = torch.cat([b for _, b in scene_out]).float().cpu()
    f_p = torch.cat(run([CacheItem(p, str(ds.products[p].image_path)) for p in pids], embedder.encode_products))
    f_p = f_p.float().cpu()
    index = {p: i for i, p in enumerate(pids)}
    scene_pooled = torch.zeros(len(queries), embedder.channels)
    product_pooled = torch.zeros(len(pids), embedder.channels)
    if data.scenes is not None and data.products is not None:
        from jobs.training.train import clean_rows
        from pipeline.backbones import pooled

        srows, prows = clean_rows(data.scenes), clean_rows(data.products)
        scene_pooled = pooled(torch.from_numpy(data.scenes.features[[srows[str(q.pair_index)] for q in queries]]).float())
        product_pooled = torch.from_numpy(data.products.features[[prows[p] for p in pids]]).float()
    return QueryEmbeddings(f_s, f_i, scene_pooled, index, f_p, product_pooled)


def finetune(data_dir, out_dir, cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Train backbone and heads end to end; writes the same checkpoint format (with the backbone inside)."""
    from jobs.evaluation.evaluate import build_queries

    if resume:
        raise ValueError("--resume is implemented for --mode frozen only; rerun the fine-tune from the start")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = prepare_data(data_dir, out_dir, cfg)
    embedder = build_embedder(categories=data.dataset.categories(), backbone=cfg.backbone,
                              backbone_weights=cfg.backbone_weights, dim=cfg.dim, hidden=cfg.hidden,
                              dropout=cfg.dropout, freeze_backbone=False)
    embedder = embedder.to(device).to(memory_format=torch.channels_last)
    head_params = [p for n, p in embedder.named_parameters() if not n.startswith("backbone.")]
    optimizer = torch.optim.AdamW([{"params": embedder.backbone.parameters(), "lr": cfg.backbone_lr},
                                   {"params": head_params, "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    val_queries = build_queries(data.dataset, data.val_pairs, seed=cfg.seed)[: cfg.val_queries]
    workers = cfg.workers if cfg.workers is not None else min(8, max(1, (torch.get_num_threads() or 2) - 1))
    history, best, triplets_seen, train_seconds = [], None, 0, 0.0
    bar = tqdm(range(cfg.epochs), desc="finetune", unit="epoch", disable=not progress)
    for epoch in bar:
        embedder.train()
        set_epoch_lr(optimizer, cfg, epoch)
        loader = DataLoader(TripletImages(data, cfg, embedder.category_to_index, epoch, embedder.backbone.input_size),
                            batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                            pin_memory=device == "cuda", drop_last=len(data.train_pairs) > cfg.batch_size,
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        losses, t0 = [], time.time()
        for scenes, products, cats in loader:
            b, m = products.shape[:2]
            with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
                f_s, f_i = embedder.encode_scenes(_to_device(scenes, device))
                f_p = embedder.encode_products(_to_device(products.flatten(0, 1), device)).reshape(b, m, -1)
                e_c = embedder.category_embeddings(cats.to(device)).unsqueeze(1).expand(-1, m, -1)
            d = hybrid_distance(f_s.float(), f_i.float(), f_p.float(), e_c.float())
            loss = triplet_loss(d[:, 0], d[:, 1:], cfg.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            triplets_seen += b
        train_seconds += time.time() - t0
        val = {}
        if val_queries:
            emb = embeddings_from_images(embedder, data, val_queries, cfg, device)
            lookup = category_lookup(embedder.cpu())
            val = score_queries(val_queries, emb, lookup, methods=("hybrid",))["hybrid"]
            embedder.to(device)
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val_hr10=f"{val.get('hr@10', float('nan')):.3f}")
        score = selection_score(val, record["loss"], cfg.select_on)
        if best is None or score > tuple(best["score"]):
            sha = save_checkpoint(out_dir / "checkpoint.pt", embedder, config={**asdict(cfg), "data": str(data_dir)},
                                  extra={"epoch": epoch + 1, "val": val})
            best = {"score": list(score), "epoch": epoch + 1, "sha256": sha}
    summary = {"checkpoint": str(out_dir / "checkpoint.pt"), "best_epoch": best["epoch"] if best else None,
               "checkpoint_sha256": best["sha256"] if best else None, "history": history,
               "n_train_pairs": len(data.train_pairs), "n_val_queries": len(val_queries),
               "triplets_per_second": round(triplets_seen / max(train_seconds, 1e-9), 1),
               "seconds": round(time.time() - started, 1), "device": device}
    write_json_atomic(out_dir / "train_summary.json", summary)
    return summary
