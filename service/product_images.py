"""Catalogue images by product id for the service, without a catalogue-sized lookup table.

The page asks for the image of every product the service has just recommended. Those ids are
remembered from the answers (a bounded LRU per index version, the image path stored in the index's
ids.parquet); any other id is found by one scan of the index's id column (8.8 ms at 1M products,
measured on the 2-core machine with 32-hex ids). A dict of every id, as before, held 140 bytes per
product (1.4 GB at 10M) and took 1.9 s per million products to build on the first image request,
under a lock that stalled every other one.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from index.store import ProductIndex

# Thumbnails of the answers of the last few thousand queries (a look has up to 8 x 50 hits).
REMEMBERED_PRODUCTS = 65_536
NOT_FOUND = object()


class ProductImageError(LookupError):
    """A product id the served index lacks, or one without a usable catalogue image (the message says which)."""


class ProductImages:
    """product id -> the catalogue image path stored in the served index, for /v1/products/{id}/image."""

    def __init__(self, capacity: int = REMEMBERED_PRODUCTS):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._paths: OrderedDict[tuple[str | None, str], str | None] = OrderedDict()
        self.scans = 0    # ids looked up by scanning the id column (the remembered ones need none)

    def remember(self, version: str | None, body: dict) -> None:
        """Keep the image paths of the products in one answer's JSON (hits of a look or a retrieval, or the
        products of a compatibility answer), for the index version that answered."""
        found = [(h["product_id"], h.get("image")) for h in _products_in(body) if "product_id" in h]
        with self._lock:
            for pid, image in found:
                self._put((version, str(pid)), image)

    def path(self, index: ProductIndex, product_id: str) -> Path:
        """The image file of `product_id` in `index`; ProductImageError when the id or its image is missing."""
        key = (index.version, product_id)
        with self._lock:
            stored = self._paths.get(key, NOT_FOUND)
            if stored is not NOT_FOUND:
                self._paths.move_to_end(key)
        if stored is NOT_FOUND:
            stored = self._scan(index, product_id)
            with self._lock:
                self._put(key, stored)
        if not stored:
            raise ProductImageError(f"product {product_id!r} has no catalogue image")
        path = Path(stored)
        if not path.is_file():
            raise ProductImageError(f"the catalogue image of product {product_id!r} is missing on the server")
        return path

    def _scan(self, index: ProductIndex, product_id: str) -> str | None:
        self.scans += 1
        table = index.table
        row = pc.index(table.column("product_id").cast(pa.string()), pa.scalar(product_id, pa.string())).as_py()
        if row < 0:
            raise ProductImageError(f"no product {product_id!r} in the index")
        return table.column("image_path")[row].as_py() if "image_path" in table.column_names else None

    def _put(self, key: tuple[str | None, str], image: str | None) -> None:
        self._paths[key] = image
        self._paths.move_to_end(key)
        while len(self._paths) > self.capacity:
            self._paths.popitem(last=False)


def _products_in(body: dict) -> list[dict]:
    products = list(body.get("hits") or []) + list(body.get("products") or [])
    for category in body.get("categories") or []:
        products.extend(category.get("hits") or [])
    return products
