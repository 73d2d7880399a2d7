"""Batch jobs: sample data, training, evaluation, embedding, index building, ingestion."""
