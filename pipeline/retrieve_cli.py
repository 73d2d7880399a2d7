"""`ctl-retrieve`: recommend products that complete the look of one scene photo."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from pipeline import defaults

EXIT_USAGE = 2  # the user's input is wrong (scene, k, category)
EXIT_FAILURE = 1  # the environment is wrong (missing index or checkpoint, mismatched pair)


class CliError(click.ClickException):
    """An error shown as one line on stderr, with its own exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"ctl-retrieve: error: {self.format_message()}", err=True)


class OneLineErrors(click.Command):
    """A click command whose every error, usage errors included, is one line on stderr."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except CliError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            click.echo(f"ctl-retrieve: error: {message} (see ctl-retrieve --help)", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("ctl-retrieve: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


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
    from pipeline.contact_sheet import render_sheet

    category = result.category or (result.hits[0].category if result.hits else result.categories[0])
    title = f"Complete the look: {Path(scene).name}"
    if result.category:
        title += f" (only {result.category})"
    return render_sheet(out_png, result.scene, result.attention_map(category), category, result.hits, title=title)


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scene", required=True, type=click.Path(path_type=Path), help="the scene photo (any image file)")
@click.option("--k", "k", type=int, default=20, show_default=True, help="how many products to return")
@click.option("--candidates", type=int, default=200, show_default=True,
              help="stage-1 candidates pulled by global distance before the hybrid re-rank")
@click.option("--category", default=None,
              help="only products of this category: its full name, or its last '|' part, in any case")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--index-dir", type=click.Path(path_type=Path), default=defaults.INDEX_DIR, show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=defaults.CHECKPOINT, show_default=True)
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write a PNG: the scene with the top category's attention, and the k products")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
def main(scene, k, candidates, category, fmt, index_dir, checkpoint, sheet, device) -> None:
    """Recommend products that complete the look of SCENE, best first.

    Stage 1 pulls the C products nearest the scene by global distance from the FAISS index;
    stage 2 re-ranks them by exact hybrid (global + attention-weighted local) distance.
    """
    if k < 1:
        raise CliError(f"--k must be at least 1, got {k}", EXIT_USAGE)
    if candidates < 1:
        raise CliError(f"--candidates must be at least 1, got {candidates}", EXIT_USAGE)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise CliError(f"--device must be cpu, cuda or cuda:N, got {device!r}", EXIT_USAGE)
    from pipeline.images import ImageError, load_image

    try:
        img = load_image(scene)  # before loading any model: a bad scene fails fast
    except ImageError as exc:
        raise CliError(f"scene {exc}", EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"scene {scene}: cannot read ({exc.strerror or exc})", EXIT_USAGE) from None

    from index.store import CheckpointMismatchError, IndexDirError
    from pipeline.checkpoint import CheckpointError
    from pipeline.retriever import RetrievalError, Retriever

    try:
        retriever = Retriever.load(checkpoint=checkpoint, index_dir=index_dir, device=device)
    except (CheckpointError, CheckpointMismatchError, IndexDirError, RetrievalError) as exc:
        raise CliError(str(exc), EXIT_FAILURE) from None
    try:
        result = retriever.retrieve(img, k=k, candidates=candidates, category=category)
    except RetrievalError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None

    if fmt == "json":
        click.echo(json.dumps([h.to_dict() for h in result.hits], indent=2))
    else:
        click.echo(format_table(result, scene=str(scene), n_products=len(retriever)))
    if sheet is not None:
        try:
            path = write_sheet(result, sheet, scene=str(scene))
        except OSError as exc:
            raise CliError(f"cannot write sheet {sheet}: {exc.strerror or exc}", EXIT_FAILURE) from None
        click.echo(f"sheet written to {path}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
