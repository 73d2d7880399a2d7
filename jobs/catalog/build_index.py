"""`ctl build-index`: embedding shards -> FAISS index directory (index, ids, float16 embeddings, info)."""
from __future__ import annotations

import click

from common import defaults
from index.build import build_index
from index.parallel import INDEX_ENGINES
from index.select import INTENTS, format_bytes
from jobs.cli_errors import OneLineCommand


@click.command(name="build-index", cls=OneLineCommand)
@click.option("--embeddings", "embeddings_dir", type=click.Path(file_okay=False), default=str(defaults.EMBEDDINGS_DIR),
              show_default=True, help="Folder written by `ctl embed-catalog` (part-*.parquet + _manifest.json).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(defaults.INDEX_DIR),
              show_default=True, help="Index directory to (re)build.")
@click.option("--memory-budget", default=defaults.MEMORY_BUDGET, show_default=True,
              help="RAM the index may use, e.g. 4GB, 512MB, 2GiB; over it, vectors are PQ-compressed.")
@click.option("--target-recall", type=click.FloatRange(0.0, 1.0, min_open=True), default=defaults.TARGET_RECALL,
              show_default=True, help="Recall@20 against exact search that the search parameters are tuned to reach.")
@click.option("--factory", default=None, help="Force a FAISS factory string (e.g. 'IVF1024,Flat', 'HNSW32,Flat').")
@click.option("--intent", type=click.Choice(INTENTS), default=defaults.INDEX_INTENT, show_default=True,
              help="Automatic choice: IVF (balanced), HNSW (low_latency) or Flat (exact).")
@click.option("--seed", type=int, default=defaults.SEED, show_default=True,
              help="Seed for training samples and queries.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Add the shards in this many parallel groups (IVF indexes), each into a copy of the trained index.")
@click.option("--engine", type=click.Choice(INDEX_ENGINES), default="local", show_default=True,
              help="local: spawned processes; ray: Ray tasks (pip install '.[ray]').")
@click.option("--address", "ray_address", default=None,
              help="ray: the cluster to join [RAY_ADDRESS, else a local instance].")
@click.option("--ondisk", is_flag=True,
              help="Keep the inverted lists in index.ivfdata beside the index, memory-mapped (indexes larger than "
                   "RAM).")
def build_index_command(embeddings_dir: str, out_dir: str, memory_budget: str, target_recall: float,
                        factory: str | None, intent: str, seed: int, workers: int, engine: str,
                        ray_address: str | None, ondisk: bool) -> None:
    """Build the FAISS index directory from the embedding shards."""
    if ray_address and engine != "ray":
        raise click.UsageError("--address needs --engine ray")
    info = build_index(embeddings_dir, out_dir, memory_budget_bytes=memory_budget, target_recall=target_recall,
                       seed=seed, factory=factory, intent=intent, workers=workers, engine=engine,
                       ray_address=ray_address, ondisk=ondisk, log=lambda m: click.echo(f"  {m}", err=True))
    rec = info.recall
    click.echo(f"index: {out_dir}")
    click.echo(f"  n={info.n}  d={info.dim}  factory={info.factory}  params={info.search_params}")
    met = "" if rec.target_met else f"  (BELOW target {rec.target})"
    click.echo(f"  recall@{rec.k}={rec.value:.4f} on {rec.queries} queries{met}")
    if info.category_recall:
        cat = info.category_recall
        click.echo(f"  category search params={info.category_search_params}  recall@{cat.k}={cat.value:.4f}")
    click.echo(f"  build {info.build_seconds:.1f}s  search {info.latency_ms.single_query_median:.3f} ms/query  "
               f"index file {format_bytes(info.memory.index_file_bytes)}  "
               f"(budget {format_bytes(info.memory.budget_bytes)})")
    phases = info.phases
    if info.parallel:
        click.echo(f"  add {phases.get('add_seconds', 0):.1f}s in {phases.get('groups')} groups, merge "
                   f"{phases.get('merge_seconds', 0):.1f}s" + ("  (inverted lists on disk)" if info.ondisk else ""))
    counts = ", ".join(f"{c}={n}" for c, n in info.counts_per_category.items())
    click.echo(f"  per category: {counts}")
