"""Shared test helpers: a random-weight embedder whose embeddings actually differ between images, a PNG header."""
from __future__ import annotations

import struct
import zlib

import torch

from pipeline.embedder import build_embedder


def random_embedder(categories, *, dim: int, seed: int = 0):
    """A random-weight embedder whose BatchNorm statistics are calibrated on random images.

    With untouched random weights the EfficientNet feature map is ~1e-8 and the same for every
    image, so every embedding would be equal and order or identity bugs would go unseen; one
    train-mode pass sets usable statistics.
    """
    torch.manual_seed(seed)
    embedder = build_embedder(categories=categories, backbone_weights="random", dim=dim)
    for module in embedder.backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    embedder.backbone.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embedder.backbone(torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8, generator=g))
    return embedder.eval()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the pixel data is a stub)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
