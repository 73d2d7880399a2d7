"""FAISS index selection, building, loading and searching."""
