"""The long-running service: `ctl serve`'s HTTP API and page over one Retriever, with hot index swaps."""
