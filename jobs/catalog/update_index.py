"""`ctl update-index`: apply added, changed and removed products to the index as a new version, without retraining."""
from __future__ import annotations

from pathlib import Path

import click

from common import defaults
from index.layout import KEEP_VERSIONS
from index.update import update_index
from jobs.cli_errors import OneLineCommand


def read_ids(text: str | None) -> list[str]:
    """--remove: comma-separated product ids, or @FILE with one id per line."""
    if not text:
        return []
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise click.BadParameter(f"{path} does not exist", param_hint="--remove")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [t.strip() for t in text.split(",") if t.strip()]


@click.command(name="update-index", cls=OneLineCommand)
@click.option("--index-dir", type=click.Path(file_okay=False), default=str(defaults.INDEX_DIR), show_default=True,
              help="Index directory whose current version is updated.")
@click.option("--embeddings", "embeddings_dir", type=click.Path(file_okay=False), default=None,
              help="Embeddings folder: `embed-catalog --incremental` output (its delta is applied), or any "
                   "folder whose products are all added or replaced.")
@click.option("--remove", default=None, help="Products to remove: id,id,... or @FILE (one id per line).")
@click.option("--keep-versions", type=click.IntRange(min=1), default=KEEP_VERSIONS, show_default=True,
              help="Complete builds kept in the index directory.")
def update_index_command(index_dir: str, embeddings_dir: str | None, remove: str | None, keep_versions: int) -> None:
    """Apply catalogue changes to the index as a new version (no retraining); report drift and rebuild advice."""
    info = update_index(index_dir, embeddings_dir, remove=read_ids(remove), keep_versions=keep_versions,
                        log=lambda m: click.echo(f"  {m}", err=True))
    up, rec = info.update, info.recall
    click.echo(f"index: {index_dir} {up.from_version} -> {info.version}: {up.upserted} added or replaced, "
               f"{up.dropped} rows dropped, n={info.n} ({up.seconds:.1f}s)")
    at_build = rec.value if rec.value is not None else float("nan")
    click.echo(f"  recall@{rec.k} after the update: {rec.after_update:.4f} (at the build: {at_build:.4f})")
    drift = f"  churn since the last full build {up.churn_since_build:.1%}"
    if up.imbalance is not None:
        drift += f", list imbalance {up.imbalance:.2f} (build {up.build_imbalance})"
    if up.new_rows_centroid_score is not None:
        drift += f", new rows' centroid score {up.new_rows_centroid_score:.3f} (build {up.build_centroid_score})"
    click.echo(drift)
    if up.rebuild_due:
        click.echo("  a full rebuild is due: " + "; ".join(up.rebuild_reasons) + " (run `ctl build-index`)")
    else:
        click.echo("  no rebuild due")
