"""The index directory contract: the names of its files and the format version, shared by build, store and jobs.

    index.faiss          the FAISS index (inner product over unit vectors; search knobs stored inside)
    ids.parquet          row -> product_id, category, image_path and the catalogue's extra columns
    embeddings.f16.npy   row-aligned float16 embeddings, memory-mapped for the exact re-rank
    info.json            written last: checkpoint sha256, backbone, d, factory, params, counts, recall

A directory without info.json is incomplete (a build still running, or one that crashed).
"""
from __future__ import annotations

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
EMBEDDINGS_FILE = "embeddings.f16.npy"
INFO_FILE = "info.json"
FILES = (INDEX_FILE, IDS_FILE, EMBEDDINGS_FILE, INFO_FILE)
FORMAT_VERSION = 1
