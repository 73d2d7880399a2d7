"""The `ctl` command group: one subcommand per batch job, imported only when it runs."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import click

from common.allocator import keep_freed_memory
from jobs.cli_errors import OneLineGroup

# name -> "module:attribute". Commands load lazily so `ctl data ...` and `ctl --help` start without torch.
JOBS = {
    "sample-data": "jobs.data.sample.generator:sample_data_command",
    "train": "jobs.training.train:train_command",
    "evaluate": "jobs.evaluation.evaluate:evaluate_command",
    "quality": "jobs.evaluation.quality:quality_command",
    "compare": "jobs.evaluation.compare:compare_command",
    "embed-catalog": "jobs.catalog.embed_catalog:embed_catalog_command",
    "build-index": "jobs.catalog.build_index:build_index_command",
    "update-index": "jobs.catalog.update_index:update_index_command",
    "demo": "jobs.demo:demo_command",
    "update-demo": "jobs.update_demo:update_demo_command",
    "serve": "jobs.serve:serve_command",
}
# The batch jobs that run the backbone over many images keep freed memory in the heap (common.allocator: on 2 cores
# `ctl embed-catalog` spent 15 s of 43 in the kernel page-faulting activations back in). `serve` does too, by its own
# option (`--release-freed-memory` turns it off).
KEEP_FREED_MEMORY = frozenset({"train", "evaluate", "quality", "embed-catalog", "demo", "update-demo"})
DATA_JOBS = {
    "stl": "jobs.data.stl_ingest:stl_command",
    "fetch": "jobs.data.fetch_images:fetch_command",
    "catalog": "jobs.data.user_catalog:catalog_command",
}


def command_summary(target: str) -> str:
    """The first line of a lazy command's docstring, read from its module's source without importing it
    (importing would pull in torch just to print `ctl --help`)."""
    module, attr = target.split(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise click.ClickException(f"command module {module} is missing")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            doc = ast.get_docstring(node) or ""
            return doc.strip().splitlines()[0] if doc.strip() else ""
    raise click.ClickException(f"{module} defines no command {attr}")


class LazyGroup(OneLineGroup):
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
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, command_summary(self.lazy[name])))
            else:
                rows.append((name, self.get_command(ctx, name).get_short_help_str(limit=120)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(name="ctl", cls=LazyGroup, lazy=JOBS, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Complete the Look: batch jobs (sample data, training, embedding, indexing, ingestion) and the service."""
    if ctx.invoked_subcommand in KEEP_FREED_MEMORY:
        keep_freed_memory()


@click.group(cls=LazyGroup, lazy=DATA_JOBS)
def data() -> None:
    """Bring real data in: STL ingestion, image fetching, user catalogues."""


main.add_command(data)


if __name__ == "__main__":  # python -m jobs.cli ...
    main()
