"""`ctl-retrieve`: recommend products that complete the look of one scene photo."""
from __future__ import annotations

import json
from pathlib import Path

import click

from common import defaults
from common.devices import DEVICE_PATTERN, resolve_device
from common.errors import ArtifactError, InputError
from jobs.cli_errors import OneLineCommand
from pipeline.images import ImageError, load_image
from retrieval.contact_sheet import render_sheet
from retrieval.retriever import Retriever


def format_table(result, *, scene: str, n_products: int) -> str:
    """A fixed-width table of the hits with a one-line header saying what was searched."""
    where = f" in category {result.category!r}" if result.category else ""
    lines = [f"scene {scene}: top {len(result)} of {n_products} products{where} "
             f"({result.candidates} candidates re-ranked by hybrid distance; score = 1 - d_h/2)"]
    if not result.hits:
        lines.append("(no products)")
        return "\n".join(lines)
    pid_w = max(7, *(len(h.product_id) for h in result.hits))
    cat_w = max(8, *(len(h.category) for h in result.hits))
    lines.append(f"{'rank':>4}  {'product':<{pid_w}}  {'category':<{cat_w}}  {'score':>7}  {'d_g':>7}  {'d_l':>7}")
    for h in result.hits:
        lines.append(f"{h.rank:>4}  {h.product_id:<{pid_w}}  {h.category:<{cat_w}}  {h.score:>7.4f}  "
                     f"{h.global_distance:>7.4f}  {h.local_distance:>7.4f}")
    return "\n".join(lines)


def write_sheet(result, out_png: str | Path, *, scene: str) -> Path:
    """The scene under the attention map of the top hit's category, beside the k products."""
    category = result.category or (result.hits[0].category if result.hits else result.categories[0])
    title = f"Complete the look: {Path(scene).name}"
    if result.category:
        title += f" (only {result.category})"
    return render_sheet(out_png, result.scene, result.attention_map(category), category, result.hits, title=title)


def device_name(ctx, param, value: str) -> str:
    if not DEVICE_PATTERN.fullmatch(value) or value == "auto":
        raise click.BadParameter(f"must be cpu, cuda or cuda:N, got {value!r}")
    return value


@click.command("ctl-retrieve", cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scene", required=True, type=click.Path(path_type=Path), help="the scene photo (any image file)")
@click.option("--k", "k", type=click.IntRange(min=1), default=defaults.K, show_default=True,
              help="how many products to return")
@click.option("--candidates", type=click.IntRange(min=1), default=defaults.CANDIDATES, show_default=True,
              help="stage-1 candidates pulled by global distance before the hybrid re-rank")
@click.option("--category", default=None,
              help="only products of this category: its full name, or its last '|' part, in any case")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--index-dir", type=click.Path(path_type=Path), default=defaults.INDEX_DIR, show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=defaults.CHECKPOINT, show_default=True)
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write a PNG: the scene with the top category's attention, and the k products")
@click.option("--device", default="cpu", show_default=True, callback=device_name, help="cpu, cuda or cuda:N")
def main(scene, k, candidates, category, fmt, index_dir, checkpoint, sheet, device) -> None:
    """Recommend products that complete the look of SCENE, best first.

    Stage 1 pulls the C products nearest the scene by global distance from the FAISS index;
    stage 2 re-ranks them by exact hybrid (global + attention-weighted local) distance.
    """
    resolve_device(device)
    try:
        img = load_image(scene)  # before loading any model: a bad scene fails fast
    except ImageError as exc:
        raise InputError(f"scene {exc}") from None
    except OSError as exc:
        raise InputError(f"scene {scene}: cannot read ({exc.strerror or exc})") from None
    retriever = Retriever.load(checkpoint=checkpoint, index_dir=index_dir, device=device)
    result = retriever.retrieve(img, k=k, candidates=candidates, category=category)

    if fmt == "json":
        click.echo(json.dumps([h.to_dict() for h in result.hits], indent=2))
    else:
        click.echo(format_table(result, scene=str(scene), n_products=len(retriever)))
    if sheet is not None:
        try:
            path = write_sheet(result, sheet, scene=str(scene))
        except OSError as exc:
            raise ArtifactError(f"cannot write sheet {sheet}: {exc.strerror or exc}") from None
        click.echo(f"sheet written to {path}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
