"""Catalogue jobs: embed the product catalogue into shards, and build the FAISS index from them."""
