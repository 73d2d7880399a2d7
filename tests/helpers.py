"""Shared test helpers: a random-weight embedder whose embeddings actually differ between images, a PNG header,
a photo-like JPEG."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import torch
from PIL import Image

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


def photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    """A photo-like picture: smooth shapes, a fine pattern and sensor noise, saved as a camera would."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 90 * np.sin(xx / 97 + yy / 211), 128 + 80 * np.cos(yy / 53), 100 + 60 * np.sin(xx / 7)], -1)
    rgb += np.random.default_rng(1).normal(0, 3, rgb.shape)
    options = {"quality": 90} if fmt == "JPEG" else {}
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, fmt, **options)
    return buf.getvalue()
