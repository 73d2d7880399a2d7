"""The `ctl` command group: one subcommand per batch job."""
import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Complete the Look: batch jobs (sample data, training, embedding, indexing, ingestion)."""


@click.group()
def data() -> None:
    """Bring real data in: STL ingestion, image fetching, user catalogues."""


main.add_command(data)

# Subcommands register themselves below; each module keeps heavy imports (torch) inside its functions
# so that `ctl data ...` starts fast.
from jobs.stl_ingest import stl_command  # noqa: E402
data.add_command(stl_command, name="stl")
from jobs.fetch_images import fetch_command  # noqa: E402
data.add_command(fetch_command, name="fetch")
from jobs.user_catalog import catalog_command  # noqa: E402
data.add_command(catalog_command, name="catalog")

from jobs.sample_data import sample_data_command  # noqa: E402

main.add_command(sample_data_command, name="sample-data")
