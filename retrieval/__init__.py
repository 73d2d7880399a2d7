"""Retrieval over a built index: the two-stage Retriever and the pictures of its answers."""
