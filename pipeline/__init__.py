"""Model, distances and retrieval logic of Complete the Look."""
