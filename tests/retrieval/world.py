"""The retrieval tests' world: a random-weight checkpoint, its products and scenes, their index, the oracles."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from index.build import build_index
from index.embedding_shards import EmbeddingsManifest, record_shard, write_shard
from pipeline.calibration import Calibrations, Platt
from pipeline.checkpoint import save_checkpoint
from pipeline.distances import global_distance, hybrid_distance, local_distance
from pipeline.embedder import PresenceHead, StyleEmbedder
from pipeline.images import image_to_tensor
from retrieval.retriever import Retriever
from tests.helpers import random_embedder as shared_random_embedder

CATEGORIES = ["shoes", "handbag", "hat"]
PER_CATEGORY = 7
N_PRODUCTS = PER_CATEGORY * len(CATEGORIES)
DIM = 16
PRODUCT_SIZE = 64  # product embeddings are computed on small images: the test only needs them to differ


def random_embedder(categories, *, seed: int = 0):
    return shared_random_embedder(categories, dim=DIM, seed=seed)


def pattern_image(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(0, 256, 3)
    cells = np.clip(base + rng.normal(0, 70, (6, 6, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(cells).resize((size, size), Image.NEAREST)


@dataclass
class World:
    root: Path
    checkpoint: Path
    sha256: str
    index_dir: Path
    embeddings_dir: Path
    scenes: list[Path]
    product_ids: list[str]
    categories: list[str]  # per product
    model: object  # the embedder saved in `checkpoint`

    def other_checkpoint(self, path: Path, categories=None) -> Path:
        """A checkpoint with another sha256 (and optionally another vocabulary), sharing this backbone."""
        model = self.model
        if categories is not None:
            model = StyleEmbedder(backbone=model.backbone, backbone_name=model.backbone_name, channels=model.channels,
                                  categories=categories, dim=model.dim, hidden=model.hidden)
        save_checkpoint(path, model.eval(), config={"backbone_weights": "random", "other": str(path)})
        return path


def write_embedding_shard(out_dir: Path, product_ids, categories, image_paths, emb: np.ndarray, sha256: str) -> None:
    """One shard through the embeddings folder contract's own writer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = pa.table({
        "product_id": pa.array(product_ids, pa.string()),
        "category": pa.array(categories, pa.string()),
        "image_path": pa.array([str(p) for p in image_paths], pa.string()),
        "brand": pa.array([f"brand-{i % 3}" for i in range(len(product_ids))], pa.string()),
    })
    manifest = EmbeddingsManifest(checkpoint_sha256=sha256, backbone="efficientnet-lite0", dim=emb.shape[1],
                                  n_input=len(product_ids), n_shards=1, complete=True)
    record_shard(out_dir, manifest, write_shard(out_dir, 0, rows, emb, checkpoint_sha256=sha256))


def build_test_index(embeddings_dir: Path, index_dir: Path) -> None:
    build_index(embeddings_dir, index_dir, n_eval_queries=50, n_tune_queries=50)


def make_world(root: Path) -> World:
    root.mkdir(parents=True, exist_ok=True)
    embedder = random_embedder(CATEGORIES)
    ckpt = root / "run" / "checkpoint.pt"
    sha = save_checkpoint(ckpt, embedder, config={"backbone_weights": "random", "dim": DIM})
    rng = np.random.default_rng(0)
    img_dir = root / "images"
    img_dir.mkdir()
    product_ids, categories, paths, images = [], [], [], []
    for i in range(N_PRODUCTS):
        pid, cat = f"p{i:03d}", CATEGORIES[i % len(CATEGORIES)]
        img = pattern_image(rng, PRODUCT_SIZE)
        path = img_dir / f"{pid}.png"
        img.save(path)
        product_ids.append(pid), categories.append(cat), paths.append(path), images.append(img)
    with torch.inference_mode():  # the saved model: a reload is identical (random weights travel in the file)
        emb = embedder.encode_products(torch.stack([image_to_tensor(im, PRODUCT_SIZE) for im in images])).numpy()
    emb_dir = root / "embeddings"
    write_embedding_shard(emb_dir, product_ids, categories, paths, emb, sha)
    index_dir = root / "index"
    build_test_index(emb_dir, index_dir)
    scenes = []
    for j in range(2):
        path = root / f"scene{j}.jpg"
        pattern_image(rng, 240).save(path, quality=90)
        scenes.append(path)
    return World(root, ckpt, sha, index_dir, emb_dir, scenes, product_ids, categories, embedder)


def exhaustive(retriever: Retriever, scene) -> dict[str, dict[str, float]]:
    """Oracle: every product's distances, one product at a time, from the index's stored embeddings."""
    embedder = retriever.embedder
    f_s, f_i = scene.f_s, scene.f_i
    out = {}
    ids = list(retriever.index.product_ids)
    for row, pid in enumerate(ids):
        cat = retriever.row_category(row)
        f_p = torch.from_numpy(retriever.index.embeddings(np.array([row])).astype(np.float32)).view(1, 1, -1)
        e_c = embedder.category_embeddings(embedder.category_indices([cat])).view(1, 1, -1)
        with torch.inference_mode():
            out[pid] = {
                "category": cat,
                "global": float(global_distance(f_s, f_p)),
                "local": float(local_distance(f_i, f_p, e_c)),
                "hybrid": float(hybrid_distance(f_s, f_i, f_p, e_c)),
            }
    return out


def ranked(oracle: dict, key: str = "hybrid", among=None) -> list[str]:
    ids = [pid for pid in oracle if among is None or pid in among]
    return sorted(ids, key=lambda pid: (oracle[pid][key], oracle[pid]["global"]))


# Presence biases (zero weights): shoes clearly present, handbag clearly missing, hat just above 0.5.
BIASES = {"shoes": 3.0, "handbag": -3.0, "hat": 0.1}
PLATT = Platt(a=-3.0, b=4.5, threshold=0.55)


def make_presence_world(world: World, retriever: Retriever, root: Path) -> tuple[Path, Path]:
    """(checkpoint, index dir) of the world's model with a presence head, its own index (same embeddings) and
    a calibration file beside the checkpoint."""
    model = world.model
    head = PresenceHead(model.channels, len(model.categories))
    head.bias.data = torch.tensor([BIASES[c] for c in model.categories])
    embedder = type(model)(backbone=model.backbone, backbone_name=model.backbone_name, channels=model.channels,
                           categories=model.categories, dim=model.dim, hidden=model.hidden)
    embedder.load_state_dict(model.state_dict())
    embedder.attach_presence(head)
    ckpt = root / "run" / "checkpoint.pt"
    sha = save_checkpoint(ckpt, embedder.eval(), config={"backbone_weights": "random"},
                          extra={"presence": {"threshold": 0.5}})
    emb = retriever.index.embeddings(np.arange(N_PRODUCTS))
    write_embedding_shard(root / "emb", world.product_ids, world.categories,
                          [world.root / "images" / f"{p}.png" for p in world.product_ids], emb, sha)
    build_test_index(root / "emb", root / "index")
    Calibrations(sha, {"hybrid": PLATT}, {}).save(ckpt.parent / "calibration.json")
    return ckpt, root / "index"
