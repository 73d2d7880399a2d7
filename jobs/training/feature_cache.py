"""Frozen-backbone feature cache: each image (or augmented view) goes through the backbone once.

Training the heads on cached features makes a CPU run on the sample take minutes. Items are
products (pooled C-vector kept) and scene views with the paired product left out (the full
C x 7 x 7 map kept, for the region embeddings). Features are written in atomic npy parts so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset

from common import defaults
from common.errors import InputError
from common.files import atomic_path, write_json_atomic
from common.progress import progress_bar
from jobs.backbone_graph import choose_graph
from jobs.workers import default_workers, lower_priority
from pipeline.backbones import Backbone, pooled, traced_backbone
from pipeline.images import ImageError, image_to_tensor, load_image
from pipeline.scene_crops import exclude_product

PART_SIZE = 256


@dataclass(frozen=True)
class CacheItem:
    """One backbone input: an image, the box to leave out (scenes), and the augmentation seed (None = clean)."""

    key: str
    image_path: str
    bbox: tuple[float, float, float, float] | None = None
    augment_seed: int | None = None


def augment(img: Image.Image, seed: int) -> Image.Image:
    """Light, seeded augmentation: horizontal flip, crop jitter, colour jitter."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    w, h = img.size
    scale = rng.uniform(0.8, 1.0)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))


def prepare(item: CacheItem, size: int, exclusion: str) -> torch.Tensor:
    """The exact input the backbone sees for an item (shared by the cache and fine-tuning)."""
    img = load_image(item.image_path)
    if item.bbox is not None:
        img = exclude_product(img, item.bbox, exclusion)
    if item.augment_seed is not None:
        img = augment(img, item.augment_seed)
    return image_to_tensor(img, size)


class _ItemImages(Dataset):
    def __init__(self, items: list[CacheItem], size: int, exclusion: str):
        self.items, self.size, self.exclusion = items, size, exclusion

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return prepare(self.items[i], self.size, self.exclusion), True
        except ImageError:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False


class _Decodes(Dataset):
    def __init__(self, items: list[CacheItem], size: int, exclusion: str):
        self.items, self.size, self.exclusion = items, size, exclusion

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> bool:
        try:
            prepare(self.items[i], self.size, self.exclusion)
        except ImageError:
            return False
        return True


def decodable(items: list[CacheItem], size: int, exclusion: str, *, workers: int = 0,
              batch_size: int = 64) -> np.ndarray:
    """For each item, whether its input can be prepared: the same test that marks a cached row invalid,
    without running the backbone (what fine-tuning needs before it reads images itself)."""
    loader = DataLoader(_Decodes(items, size, exclusion), batch_size=batch_size, num_workers=workers)
    flags = [batch.numpy() for batch in loader]
    return np.concatenate(flags).astype(bool) if flags else np.zeros(0, bool)


def _fingerprint(items: list[CacheItem], backbone: Backbone, exclusion: str, keep_map: bool, traced: bool) -> str:
    digest = hashlib.sha256()
    # The traced graph's features differ from eager ones in the last bits: a cache is made by one of them (an
    # eager cache keeps the fingerprint it had before traced graphs were an option).
    digest.update(json.dumps([backbone.name, str(backbone.weights), exclusion, defaults.EXCLUSION_MARGIN, keep_map]
                             + (["traced"] if traced else [])).encode())
    for it in items:
        digest.update(json.dumps([it.key, it.image_path, it.bbox, it.augment_seed]).encode())
    return digest.hexdigest()


@dataclass
class FeatureTable:
    """Features for a list of items: `features[i]` belongs to `items[i]`; `valid[i]` is False for unreadable images."""

    items: list[CacheItem]
    features: np.ndarray  # float16, N x C (pooled) or N x C x 7 x 7 (maps)
    valid: np.ndarray

    def rows_by_key(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            if self.valid[i]:
                rows.setdefault(it.key, []).append(i)
        return rows


def _write_part(cache_dir: Path, part: int, rows: dict[int, tuple[np.ndarray, bool]]) -> None:
    order = sorted(rows)
    with atomic_path(cache_dir / f"part-{part:05d}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=np.stack([rows[r][0] for r in order]), valid=np.array([rows[r][1] for r in order]))


def compute_features(
    items: list[CacheItem],
    backbone: Backbone,
    cache_dir: str | os.PathLike,
    *,
    keep_map: bool,
    exclusion: str = "crop",
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "cpu",
    desc: str = "features",
    trace: bool | None = None,
) -> FeatureTable:
    """Backbone features for `items`, computed once and cached under `cache_dir` (resumable by parts).

    `trace`: run the backbone as its traced graph (True), eagerly (False), or as jobs.backbone_graph chooses for
    this many items on this device (None: traced on a CPU from a few hundred items, 1.1-1.5x the eager rate measured).
    """
    cache_dir = Path(cache_dir)
    graph = choose_graph(torch.device(device).type, len(items), asked=trace)
    fingerprint = _fingerprint(items, backbone, exclusion, keep_map, graph.traced)
    meta_path = cache_dir / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("fingerprint") != fingerprint:
        for stale in cache_dir.glob("part-*.npz"):
            stale.unlink()
    write_json_atomic(meta_path, {"fingerprint": fingerprint, "n": len(items), "keep_map": keep_map})
    workers = default_workers(torch.device(device).type) if workers is None else workers
    # The CPU's faster batch (common/defaults.py); the accelerator's as before.
    batch_size = batch_size or (defaults.BATCH_SIZE_CPU if torch.device(device).type == "cpu" else 32)
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    n_parts = (len(items) + PART_SIZE - 1) // PART_SIZE
    todo = [p for p in range(n_parts) if not (cache_dir / f"part-{p:05d}.npz").is_file()]
    todo_rows = [i for p in todo for i in range(p * PART_SIZE, min((p + 1) * PART_SIZE, len(items)))]
    bar = progress_bar(total=len(items), initial=len(items) - len(todo_rows), desc=desc, unit="img", disable=not todo)
    # One loader over every missing row (workers start once); a part is written as soon as it is full.
    loader = DataLoader(_ItemImages([items[i] for i in todo_rows], backbone.input_size, exclusion),
                        batch_size=batch_size, num_workers=workers, pin_memory=device != "cpu",
                        worker_init_fn=lower_priority if device == "cpu" else None) if todo_rows else []
    pending: dict[int, dict[int, tuple[np.ndarray, bool]]] = {}
    position = 0
    forward = traced_backbone(backbone, size=backbone.input_size, device=device) if graph.traced and todo_rows \
        else backbone
    with torch.inference_mode():
        for images, ok in loader:
            fmap = forward(images.to(device).contiguous(memory_format=torch.channels_last))
            out = (fmap if keep_map else pooled(fmap)).float().cpu().numpy().astype(np.float16)
            for feat, good in zip(out, ok.numpy(), strict=True):
                row = todo_rows[position]
                position += 1
                part = row // PART_SIZE
                pending.setdefault(part, {})[row] = (feat, bool(good))
                if len(pending[part]) == min(PART_SIZE, len(items) - part * PART_SIZE):
                    _write_part(cache_dir, part, pending.pop(part))
            bar.update(len(images))
    bar.close()
    parts = [np.load(cache_dir / f"part-{p:05d}.npz") for p in range(n_parts)]
    if not parts:
        raise InputError("no items to compute features for")
    return FeatureTable(
        items, np.concatenate([p["features"] for p in parts]), np.concatenate([p["valid"] for p in parts])
    )
