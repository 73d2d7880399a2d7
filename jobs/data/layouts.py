"""The file and folder names of the two dataset layouts: every reader and writer takes them from here.

STL-ingested layout (``ctl data stl`` or ``ctl data catalog`` writes it, ``ctl data fetch`` fills in
the images)::

    DIR/scenes.parquet       scene_id, image_url, image_path (null until a local path is known), n_products
    DIR/products.parquet     product_id, category, image_url, image_path (null), n_scenes
    DIR/pairs.parquet        scene_id, product_id, category, left, top, right, bottom, line
    DIR/images.parquet       url, image_path, sha256, bytes, width, height    (the fetcher's url -> file map)
    DIR/catalog.parquet      the products that have a local image (the catalogue manifest contract)
    DIR/summary.json         counts; DIR/rejects.jsonl the rejected pair lines
    DIR/fetch_report.json    the fetcher's counts and failures; DIR/cache/ its default image cache

Sample layout (``ctl sample-data`` writes it)::

    DIR/pairs.jsonl                {"product": id, "scene": id, "bbox": [l, t, r, b]} per line
    DIR/categories.json            {product_id: category}
    DIR/images/scenes/{sid}.jpg
    DIR/images/products/{pid}.jpg
    DIR/catalog.parquet            product_id, image_path (relative to DIR), category
    DIR/_done.json                 the generator's parameters and counts, written last
"""
from __future__ import annotations

from pathlib import Path

# -- STL-ingested layout -------------------------------------------------------------------------------
SCENES = "scenes.parquet"
PRODUCTS = "products.parquet"
PAIRS = "pairs.parquet"
IMAGES = "images.parquet"
CATALOG = "catalog.parquet"
SUMMARY = "summary.json"
REJECTS = "rejects.jsonl"
FETCH_REPORT = "fetch_report.json"
IMAGE_CACHE = "cache"

# -- sample layout -------------------------------------------------------------------------------------
SAMPLE_PAIRS = "pairs.jsonl"
SAMPLE_CATEGORIES = "categories.json"
SCENE_DIR = Path("images") / "scenes"
PRODUCT_DIR = Path("images") / "products"
SAMPLE_IMAGE_SUFFIX = ".jpg"
DONE_FILE = "_done.json"
# CATALOG (above) is the sample's catalogue manifest too.


def sample_scene_image(scene_id: str) -> Path:
    """A sample scene's image, relative to the sample dir."""
    return SCENE_DIR / f"{scene_id}{SAMPLE_IMAGE_SUFFIX}"


def sample_product_image(product_id: str) -> Path:
    """A sample product's catalogue shot, relative to the sample dir."""
    return PRODUCT_DIR / f"{product_id}{SAMPLE_IMAGE_SUFFIX}"
