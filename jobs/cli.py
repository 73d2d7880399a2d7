"""The `ctl` command group: one subcommand per batch job, imported only when it runs."""
from __future__ import annotations

import importlib

import click

# name -> "module:attribute". Commands load lazily so `ctl data ...` and `ctl --help` start without torch.
JOBS = {
    "sample-data": "jobs.sample_data:sample_data_command",
    "train": "jobs.train:train_command",
    "evaluate": "jobs.evaluate:evaluate_command",
    "embed-catalog": "jobs.embed_catalog:embed_catalog_command",
    "build-index": "jobs.build_index:build_index_command",
    "demo": "jobs.demo:demo_command",
}
DATA_JOBS = {
    "stl": "jobs.stl_ingest:stl_command",
    "fetch": "jobs.fetch_images:fetch_command",
    "catalog": "jobs.user_catalog:catalog_command",
}
SHORT_HELP = {
    "sample-data": "Generate the embedded sample looks (scenes, products, pairs).",
    "train": "Train the style embedding with a hybrid-distance triplet loss.",
    "evaluate": "FITB and HR@K of hybrid, global, local and backbone methods.",
    "embed-catalog": "Embed a catalogue manifest into parquet shards (resumable).",
    "build-index": "Build the FAISS index directory from embedding shards.",
    "demo": "Run the whole path on the embedded sample, then one retrieval.",
    "stl": "Ingest Shop-the-Look pairs and categories into parquet manifests.",
    "fetch": "Download a dataset's images into a content-addressed cache.",
    "catalog": "Build a catalogue manifest from a folder tree or a CSV/parquet.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [(name, SHORT_HELP.get(name) or self.get_command(ctx, name).get_short_help_str())
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=JOBS, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Complete the Look: batch jobs (sample data, training, embedding, indexing, ingestion)."""


@click.group(cls=LazyGroup, lazy=DATA_JOBS)
def data() -> None:
    """Bring real data in: STL ingestion, image fetching, user catalogues."""


main.add_command(data)


if __name__ == "__main__":  # python -m jobs.cli ...
    main()
