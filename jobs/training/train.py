"""Triplet training of the style embedding on scene-product pairs (frozen-backbone cache or fine-tuning)."""
from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from common.files import atomic_path, write_json_atomic
from jobs.data.datasets import load_dataset
from jobs.data.splits import load_or_make_split
from jobs.evaluation.evaluate import Query, QueryEmbeddings, build_queries, score_queries
from jobs.training.feature_cache import CacheItem, FeatureTable, compute_features
from pipeline.backbones import build_backbone, pooled
from pipeline.checkpoint import save_checkpoint
from pipeline.distances import hybrid_distance, triplet_loss
from pipeline.embedder import StyleEmbedder, build_embedder


@dataclass
class TrainConfig:
    """Every setting of a run; saved as config.json beside the checkpoint."""

    seed: int = 0
    backbone: str = "efficientnet-lite0"
    backbone_weights: str = "imagenet"
    mode: str = "frozen"            # frozen: heads on cached features; finetune: end to end
    dim: int = 128
    hidden: int = 0                 # 0: linear heads (an MLP with this many hidden units otherwise)
    dropout: float = 0.5
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    backbone_lr: float = 1e-4       # finetune only
    weight_decay: float = 1e-4
    margin: float = 0.2
    negatives: int = 4              # same-category negatives per (scene, positive)
    scene_views: int = 1            # augmented views per training scene, besides the clean one
    product_views: int = 1          # augmented views per training positive, besides the clean one
    exclusion: str = "mask"         # how the positive is left out of its scene: mask | crop
    lr_schedule: str = "cosine"     # cosine (decays to 0 over `epochs`) | constant
    select_on: str = "fitb+hr@10"   # validation score that picks the checkpoint: fitb+hr@10 | hr@10
    val_queries: int = 200
    device: str = "auto"
    workers: int | None = None


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda asked for, but no CUDA device is available")
    return device


def _view_seed(seed: int, kind: str, key: str, view: int) -> int:
    # hashlib, not hash(): Python salts str hashes per process, and views must be the same every run.
    return int.from_bytes(hashlib.sha256(f"{seed}|{kind}|{key}|{view}".encode()).digest()[:4], "little")


@dataclass
class TrainingData:
    """The dataset, its split and the cached features the heads train on."""

    dataset: object
    split: dict
    train_pairs: list[int]
    val_pairs: list[int]
    test_pairs: list[int]
    scenes: FeatureTable | None = None     # rows keyed by pair index (str), maps
    products: FeatureTable | None = None   # rows keyed by product id, pooled
    negatives_pool: dict = field(default_factory=dict)   # pair index -> candidate negative product ids


def prepare_data(data_dir, out_dir, cfg: TrainConfig) -> TrainingData:
    dataset = load_dataset(data_dir)
    if not dataset.pairs:
        raise click.ClickException(f"{data_dir}: the dataset has no usable scene-product pairs")
    split = load_or_make_split(Path(out_dir) / "split.json", [p.scene_id for p in dataset.pairs], seed=cfg.seed)
    part_of = {s: name for name, ids in split.items() for s in ids}
    parts = {"train": [], "val": [], "test": []}
    for j, pair in enumerate(dataset.pairs):
        parts[part_of[pair.scene_id]].append(j)
    # Training negatives come from the positives of *training* scenes only. Were they drawn from the
    # whole catalogue, the products of validation/test scenes (never a positive in training) would only
    # ever be pushed away from scenes, and the heads would learn "was this product in a training scene?"
    # instead of compatibility: held-out positives then rank below chance.
    train_products = sorted({dataset.pairs[j].product_id for j in parts["train"]})
    by_category: dict[str, list[str]] = {}
    for pid in train_products:
        by_category.setdefault(dataset.products[pid].category, []).append(pid)
    in_scene: dict[str, set[str]] = {}
    for pair in dataset.pairs:
        in_scene.setdefault(pair.scene_id, set()).add(pair.product_id)
    pools = {}
    for j in parts["train"]:
        pair = dataset.pairs[j]
        pool = [p for p in by_category[dataset.products[pair.product_id].category] if p not in in_scene[pair.scene_id]]
        if pool:
            pools[j] = pool
    return TrainingData(dataset, split, [j for j in parts["train"] if j in pools], parts["val"], parts["test"],
                        negatives_pool=pools)


def cache_features(data: TrainingData, out_dir, cfg: TrainConfig, device: str) -> None:
    """Fill `data.scenes` and `data.products` from the backbone (computed once, then read from disk)."""
    ds = data.dataset
    backbone = build_backbone(name=cfg.backbone, weights=cfg.backbone_weights)
    train_set = set(data.train_pairs)
    scene_items = []
    for j, pair in enumerate(ds.pairs):
        path = str(ds.scenes[pair.scene_id])
        scene_items.append(CacheItem(str(j), path, tuple(pair.bbox)))
        if j in train_set:
            scene_items += [CacheItem(str(j), path, tuple(pair.bbox), _view_seed(cfg.seed, "scene", str(j), v))
                            for v in range(cfg.scene_views)]
    positives = {ds.pairs[j].product_id for j in data.train_pairs}
    product_items = []
    for pid in sorted(ds.products):
        path = str(ds.products[pid].image_path)
        product_items.append(CacheItem(pid, path))
        if pid in positives:
            product_items += [CacheItem(pid, path, None, _view_seed(cfg.seed, "product", pid, v))
                              for v in range(cfg.product_views)]
    cache = Path(out_dir) / "cache"
    common = dict(exclusion=cfg.exclusion, workers=cfg.workers, device=device)
    data.products = compute_features(product_items, backbone, cache / "products", keep_map=False,
                                     desc="product features", **common)
    data.scenes = compute_features(scene_items, backbone, cache / "scenes", keep_map=True,
                                   desc="scene features", **common)


def clean_rows(table: FeatureTable) -> dict[str, int]:
    """key -> the row of its un-augmented view."""
    return {it.key: i for i, it in enumerate(table.items) if it.augment_seed is None and table.valid[i]}


def embeddings_from_cache(embedder: StyleEmbedder, data: TrainingData, queries: list[Query]) -> QueryEmbeddings:
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


def usable_queries(data: TrainingData, pair_indices, seed: int) -> list[Query]:
    scene_rows, product_rows = clean_rows(data.scenes), clean_rows(data.products)
    queries = build_queries(data.dataset, pair_indices, seed=seed)
    return [q for q in queries if str(q.pair_index) in scene_rows
            and all(p in product_rows for p in (q.product_id, *q.rank_negatives))]


def category_lookup(embedder: StyleEmbedder):
    def lookup(name: str) -> torch.Tensor:
        return embedder.category_embeddings(embedder.category_indices([name]))[0]
    return lookup


class TripletBatches:
    """Seeded batches of (scene view, positive view, K same-category negatives) as cached-feature rows."""

    def __init__(self, data: TrainingData, cfg: TrainConfig, category_index: dict[str, int]):
        self.data, self.cfg = data, cfg
        self.scene_rows = data.scenes.rows_by_key()
        self.product_rows = data.products.rows_by_key()
        self.category_index = category_index
        self.pairs = [j for j in data.train_pairs if str(j) in self.scene_rows
                      and data.dataset.pairs[j].product_id in self.product_rows]
        self.pools = {j: [p for p in data.negatives_pool[j] if p in self.product_rows] for j in self.pairs}
        self.pairs = [j for j in self.pairs if self.pools[j]]

    def epoch(self, rng: np.random.Generator):
        ds, cfg = self.data.dataset, self.cfg
        order = rng.permutation(len(self.pairs))
        for start in range(0, len(order), cfg.batch_size):
            batch = [self.pairs[i] for i in order[start:start + cfg.batch_size]]
            scene_rows, pos_rows, neg_rows, cats = [], [], [], []
            for j in batch:
                pid = ds.pairs[j].product_id
                scene_rows.append(rng.choice(self.scene_rows[str(j)]))
                pos_rows.append(rng.choice(self.product_rows[pid]))
                pool = self.pools[j]
                picks = rng.choice(len(pool), size=cfg.negatives, replace=len(pool) < cfg.negatives)
                # Negatives are drawn from the same views (clean or augmented) as positives: were
                # positives the only augmented products, "looks augmented" would separate them.
                neg_rows.append([rng.choice(self.product_rows[pool[k]]) for k in picks])
                cats.append(self.category_index[ds.products[pid].category])
            yield (torch.from_numpy(self.data.scenes.features[scene_rows]),
                   torch.from_numpy(self.data.products.features[pos_rows]),
                   torch.from_numpy(self.data.products.features[np.array(neg_rows)]),
                   torch.tensor(cats))


def triplet_step(embedder: StyleEmbedder, scene_maps, pos_feats, neg_feats, cats, margin: float) -> torch.Tensor:
    """Hybrid-distance triplet loss of one batch (features in, scalar loss out)."""
    b, k = neg_feats.shape[:2]
    f_s, f_i = embedder.scene_from_features(scene_maps)
    f_pos = embedder.product_from_features(pos_feats)
    f_neg = embedder.product_from_features(neg_feats.reshape(b * k, *neg_feats.shape[2:])).reshape(b, k, -1)
    f_p = torch.cat([f_pos.unsqueeze(1), f_neg], dim=1)
    e_c = embedder.category_embeddings(cats).unsqueeze(1).expand(-1, k + 1, -1)
    d = hybrid_distance(f_s, f_i, f_p, e_c)
    return triplet_loss(d[:, 0], d[:, 1:], margin)


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> None:
    """Each parameter group's learning rate for `epoch` (0-based): constant, or cosine from its base to 0.

    A closed form of the epoch index, so a run resumed with more epochs follows the same schedule as
    a run started with that many.
    """
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; known: constant, cosine")
    factor = 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs)) if cfg.lr_schedule == "cosine" else 1.0
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * factor


def selection_score(val: dict, loss: float, select_on: str) -> tuple:
    """Higher is better; ties fall back to FITB, then to the training loss.

    FITB here is the expected FITB (every draw of negatives): on a small validation split a single
    draw adds enough noise to pick an epoch by luck.
    """
    hr10, fitb = val.get("hr@10", 0.0), val.get("fitb_expected", val.get("fitb", 0.0))
    if select_on == "fitb+hr@10":
        return (fitb + hr10, fitb, -loss)
    if select_on == "hr@10":
        return (hr10, fitb, -loss)
    raise ValueError(f"unknown select_on {select_on!r}; known: fitb+hr@10, hr@10")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _state_path(out_dir) -> Path:
    return Path(out_dir) / "training_state.pt"


def train(data_dir, out_dir, *, config: TrainConfig | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train on the pairs of `data_dir`; write checkpoint.pt (best on validation), config.json, split.json."""
    cfg = config or TrainConfig()
    if cfg.mode == "finetune":
        from jobs.training.finetune import finetune
        return finetune(data_dir, out_dir, cfg, resume=resume, progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = prepare_data(data_dir, out_dir, cfg)
    cache_features(data, out_dir, cfg, device)
    categories = data.dataset.categories()
    seed_everything(cfg.seed)  # again: computing the cache (or not, when it exists) draws from torch's RNG
    embedder = build_embedder(categories=categories, backbone=cfg.backbone, backbone_weights=cfg.backbone_weights,
                              with_backbone=False, dim=cfg.dim, hidden=cfg.hidden, dropout=cfg.dropout)
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = TripletBatches(data, cfg, embedder.category_to_index)
    val_queries = usable_queries(data, data.val_pairs, cfg.seed)[: cfg.val_queries]
    history, best, start_epoch = [], None, 0
    rng = np.random.default_rng(cfg.seed)
    state_path = _state_path(out_dir)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        # Only the epoch count may change on resume (to train a finished run longer).
        if {**state["config"], "epochs": cfg.epochs} != asdict(cfg):
            raise click.ClickException("--resume: the saved run used other settings; start a new --out or drop --resume")
        embedder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
    bar = tqdm(range(start_epoch, cfg.epochs), desc="train", unit="epoch", disable=not progress,
               initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        embedder.train()
        set_epoch_lr(optimizer, cfg, epoch)
        losses = []
        for scene_maps, pos, neg, cats in batches.epoch(rng):
            loss = triplet_step(embedder, scene_maps.float(), pos.float(), neg.float(), cats, cfg.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        val = score_queries(val_queries, embeddings_from_cache(embedder, data, val_queries),
                            category_lookup(embedder), methods=("hybrid",))["hybrid"] if val_queries else {}
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val_hr10=f"{val.get('hr@10', float('nan')):.3f}",
                        val_fitb=f"{val.get('fitb_expected', float('nan')):.3f}")
        score = selection_score(val, record["loss"], cfg.select_on)
        if best is None or score > tuple(best["score"]):
            best = {"score": list(score), "epoch": epoch + 1}
            sha = save_checkpoint(out_dir / "checkpoint.pt", embedder, config={**asdict(cfg), "data": str(data_dir)},
                                  extra={"epoch": epoch + 1, "val": val})
            best["sha256"] = sha
        with atomic_path(state_path) as tmp:
            torch.save({"config": asdict(cfg), "model": embedder.state_dict(), "optimizer": optimizer.state_dict(),
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history,
                        "best": best, "epoch": epoch + 1}, tmp)
    summary = {"checkpoint": str(out_dir / "checkpoint.pt"), "best_epoch": best["epoch"] if best else None,
               "checkpoint_sha256": best.get("sha256") if best else None, "history": history,
               "n_train_pairs": len(batches.pairs), "n_val_queries": len(val_queries),
               "seconds": round(time.time() - started, 1), "device": device}
    write_json_atomic(out_dir / "train_summary.json", summary)
    return summary


@click.command("train")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=Path("data/sample"), show_default=True,
              help="dataset folder in the Shop-the-Look formats (sample or `ctl data stl` output)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("data/runs/sample"), show_default=True)
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--mode", type=click.Choice(["frozen", "finetune"]), default=TrainConfig.mode, show_default=True)
@click.option("--backbone", type=click.Choice(["efficientnet-lite0", "resnet50"]), default=TrainConfig.backbone, show_default=True)
@click.option("--backbone-weights", default=TrainConfig.backbone_weights, show_default=True,
              help="imagenet, or a path to a local weights file")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--dim", type=int, default=TrainConfig.dim, show_default=True)
@click.option("--hidden", type=int, default=TrainConfig.hidden, show_default=True,
              help="hidden units of the global and product heads (0: linear heads)")
@click.option("--dropout", type=float, default=TrainConfig.dropout, show_default=True)
@click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), default=TrainConfig.lr_schedule,
              show_default=True)
@click.option("--negatives", type=int, default=TrainConfig.negatives, show_default=True)
@click.option("--exclusion", type=click.Choice(["mask", "crop"]), default=TrainConfig.exclusion, show_default=True,
              help="leave the product out of its scene by masking its box or cropping to the largest band beside it")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--workers", type=int, default=None, help="image decoding workers (default: 1 on CPU, up to 4 on a GPU)")
@click.option("--resume", is_flag=True, help="continue an interrupted run in --out")
def train_command(data_dir, out_dir, seed, mode, backbone, backbone_weights, epochs, batch_size, lr, dim, hidden,
                  dropout, lr_schedule, negatives, exclusion, device, workers, resume):
    """Train the style embedding with a hybrid-distance triplet loss."""
    from pipeline.backbones import BackboneWeightsError

    if not data_dir.exists():
        raise click.ClickException(f"{data_dir}: no such dataset folder (make sample-data writes data/sample)")
    if epochs < 1 or batch_size < 1 or negatives < 1:
        raise click.ClickException("--epochs, --batch-size and --negatives must be at least 1")
    if hidden < 0 or not 0.0 <= dropout < 1.0:
        raise click.ClickException("--hidden must be 0 or more and --dropout in [0, 1)")
    cfg = TrainConfig(seed=seed, mode=mode, backbone=backbone, backbone_weights=backbone_weights, epochs=epochs,
                      batch_size=batch_size, lr=lr, dim=dim, hidden=hidden,
                      dropout=dropout, lr_schedule=lr_schedule, negatives=negatives, exclusion=exclusion,
                      device=device, workers=workers)
    try:
        summary = train(data_dir, out_dir, config=cfg, resume=resume)
    except (BackboneWeightsError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    last = summary["history"][-1] if summary["history"] else {}
    click.echo(f"trained {len(summary['history'])} epochs in {summary['seconds']} s on {summary['device']}; "
               f"best epoch {summary['best_epoch']} -> {summary['checkpoint']} "
               f"(last loss {last.get('loss', float('nan')):.3f})")
