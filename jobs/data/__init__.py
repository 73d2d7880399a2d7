"""Data in: dataset layouts and loaders, the sample generator, STL ingestion, the image fetcher, user catalogues."""
