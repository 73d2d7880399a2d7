"""`ctl-retrieve`: recommend products that complete the look of one scene photo.

Three questions, one command:
  --look            the whole look: for each category missing from the scene, its best products
  (default)         flat: the nearest products of any category (or of one, with --category)
  --product ID ...  does each of these products complete the scene? (calibrated probability, yes/no)
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from common import defaults
from common.devices import DEVICE_PATTERN, resolve_device
from common.errors import ArtifactError, InputError
from common.naming import short_category
from jobs.cli_errors import OneLineCommand
from pipeline.backbones import Backbone
from pipeline.checkpoint import SAMPLE_MODEL_NOTE
from pipeline.images import ImageError, load_scene
from retrieval.contact_sheet import render_look_sheet, render_sheet
from retrieval.retriever import Retriever

SCENE_INPUT_SIZE = Backbone.input_size   # every backbone's today; checked against the loaded one


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


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _row(h, pid_w: int) -> str:
    return (f"{h.rank:>4}  {h.product_id:<{pid_w}}  {h.score:>7.4f}  {h.global_distance:>7.4f}  "
            f"{h.local_distance:>7.4f}")


def format_look(look, *, scene: str, k: int, has_presence: bool) -> str:
    """The whole look as text: one block per category (missing ones first), then what was left out."""
    n = len(look)
    missing = sum(1 for cl in look if cl.present is not True)
    what = f"{_count(missing, 'category', 'categories')} missing from the scene" if has_presence else \
        _count(n, "category", "categories")
    if has_presence and missing != n:
        what += f" and of {n - missing} already in it"
    candidates = max((cl.candidates for cl in look), default=0)
    lines = [f"scene {scene}: the whole look, the best {k} of each of {what} "
             f"(up to {candidates} candidates each, re-ranked by hybrid distance; score = 1 - d_h/2)"]
    if look.left_out:
        lines.append("left out, already in the scene: " + ", ".join(
            f"{short_category(c)} (p={p:.2f})" for c, p in look.left_out.items()) + "; --include-present shows them")
    if not has_presence:
        lines.append("(this checkpoint has no presence head: every category is shown)")
    for cl in look:
        state = "" if cl.presence_probability is None else \
            f"  ({'already in the scene' if cl.present else 'missing'}: p(in scene)={cl.presence_probability:.2f})"
        lines.append("")
        lines.append(f"{cl.category}{state}")
        if not cl.hits:
            lines.append("  (no products)")
            continue
        pid_w = max(7, *(len(h.product_id) for h in cl.hits))
        lines.append(f"{'rank':>4}  {'product':<{pid_w}}  {'score':>7}  {'d_g':>7}  {'d_l':>7}")
        lines.extend(_row(h, pid_w) for h in cl.hits)
    return "\n".join(lines)


def format_compatibility(result, *, scene: str) -> str:
    """One row per product asked about: distances, calibrated probability and the verdict."""
    rule = "no calibration for this checkpoint" if result.threshold is None else \
        f"probability calibrated on validation pairs; completes the look at p >= {result.threshold:.3f}"
    lines = [f"scene {scene}: does each product complete the look? ({rule})"]
    pid_w = max(7, *(len(c.product_id) for c in result))
    cat_w = max(8, *(len(c.category) for c in result))
    lines.append(f"{'product':<{pid_w}}  {'category':<{cat_w}}  {'score':>7}  {'d_h':>7}  {'d_g':>7}  {'d_l':>7}"
                 f"  {'p':>6}  completes")
    for c in result:
        p = "-" if c.probability is None else f"{c.probability:.3f}"
        verdict = "-" if c.completes is None else ("yes" if c.completes else "no")
        lines.append(f"{c.product_id:<{pid_w}}  {c.category:<{cat_w}}  {c.score:>7.4f}  {c.hybrid_distance:>7.4f}  "
                     f"{c.global_distance:>7.4f}  {c.local_distance:>7.4f}  {p:>6}  {verdict}")
    return "\n".join(lines)


def write_look_sheet(look, out_png: str | Path, *, scene: str) -> Path:
    """One row per category of the look: the scene under its attention map, beside its products."""
    return render_look_sheet(out_png, look.scene, look.categories, title=f"Complete the look: {Path(scene).name}",
                             left_out=look.left_out)


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


def check_combination(ctx, *, look: bool, products: tuple, category, include_present: bool, sheet) -> None:
    """Refuse options that ask two different questions at once, before any work (a one-line usage error)."""
    given = {name for name in ("k", "candidates")
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    if look and category is not None:
        raise click.UsageError("--look gives every category missing from the scene; --category asks for one "
                               "(drop --look for the best products of one category)")
    if look and products:
        raise click.UsageError("--look and --product ask different questions: the whole look, or whether given "
                               "products complete the scene; use one")
    if products and (category is not None or sheet is not None or given):
        extra = sorted([*(["--category"] if category is not None else []), *(["--sheet"] if sheet else []),
                        *(f"--{n}" for n in given)])
        raise click.UsageError(f"--product scores the products given; {', '.join(extra)} "
                               f"{'does' if len(extra) == 1 else 'do'} not apply to it")
    if include_present and not look:
        raise click.UsageError("--include-present only applies to --look")


@click.command("ctl-retrieve", cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scene", required=True, type=click.Path(path_type=Path), help="the scene photo (any image file)")
@click.option("--look", is_flag=True,
              help="the whole look: for every category missing from the scene, its best --k products, "
                   "with where the model looked")
@click.option("--include-present", is_flag=True,
              help="with --look: also the categories the scene already shows (after the missing ones)")
@click.option("--product", "products", multiple=True, metavar="ID",
              help="does this product complete the scene? (repeat for several): distances, calibrated "
                   "probability, yes/no")
@click.option("--k", "k", type=click.IntRange(min=1), default=None,
              help=f"how many products to return [default: {defaults.K}; per category with --look: "
                   f"{defaults.LOOK_K}]")
@click.option("--candidates", type=click.IntRange(min=1), default=None,
              help="stage-1 candidates pulled from the index before the exact hybrid re-rank (per category with "
                   f"--look or --category) [default: k + max(k, {defaults.CANDIDATES_EXACT_MARGIN}) where stage 1 "
                   f"ranks by the hybrid over an exact search, else {defaults.CANDIDATES}]")
@click.option("--stage1", type=click.Choice(defaults.STAGE1_MODES), default=defaults.STAGE1, show_default=True,
              help="what stage 1 searches the index by: each category's hybrid query (its candidates are the "
                   "hybrid's own nearest) or the scene's global embedding (the paper's pipeline)")
@click.option("--category", default=None,
              help="only products of this category: its full name, or its last '|' part, in any case")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--index-dir", type=click.Path(path_type=Path), default=defaults.INDEX_DIR, show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=defaults.CHECKPOINT, show_default=True)
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write a PNG: the scene with the top category's attention and the k products "
                   "(with --look: one row per category, its attention map beside its products)")
@click.option("--device", default="cpu", show_default=True, callback=device_name, help="cpu, cuda or cuda:N")
@click.option("--exact-decode", is_flag=True,
              help="decode the scene in full (default: a JPEG larger than 4x the network's input is decoded "
                   "DCT-scaled, 2.7x faster for a 12 MP phone photo)")
@click.pass_context
def main(ctx, scene, look, include_present, products, k, candidates, stage1, category, fmt, index_dir, checkpoint,
         sheet, device, exact_decode) -> None:
    """Recommend products that complete the look of SCENE.

    --look: the whole look, for each category missing from the scene (judged by the checkpoint's
    presence head) its best products and the category's attention over the scene. Without it: the
    nearest products of any category, best first (--category: of one category). --product ID: whether
    each product completes the scene. Stage 1 pulls C products from the FAISS index by each category's hybrid
    query (or, --stage1 global, by the scene's global embedding); stage 2 re-ranks them by exact hybrid
    (global + attention-weighted local) distance.
    """
    check_combination(ctx, look=look, products=products, category=category, include_present=include_present,
                      sheet=sheet)
    resolve_device(device)
    try:
        # before loading any model: a bad scene fails fast
        img = load_scene(scene, SCENE_INPUT_SIZE, exact=exact_decode)
    except ImageError as exc:
        raise InputError(f"scene {exc}") from None
    except OSError as exc:
        raise InputError(f"scene {scene}: cannot read ({exc.strerror or exc})") from None
    retriever = Retriever.load(checkpoint=checkpoint, index_dir=index_dir, device=device, stage1=stage1)
    if retriever.input_size != SCENE_INPUT_SIZE and not exact_decode:   # another network's input: its own floor
        img = load_scene(scene, retriever.input_size)
    if retriever.checkpoint.training_data == "sample":
        click.echo(f"note: {SAMPLE_MODEL_NOTE}", err=True)
    if products:
        result = retriever.compatibility(img, list(products))
        if result.threshold is None:
            for note in retriever.notes:
                click.echo(f"note: {note}", err=True)
        click.echo(json.dumps(result.to_dict(scene=str(scene)), indent=2) if fmt == "json"
                   else format_compatibility(result, scene=str(scene)))
        return
    if look:
        k = defaults.LOOK_K if k is None else k
        result = retriever.look(img, k=k, candidates=candidates, include_present=include_present)
        if not retriever.checkpoint.has_presence:
            for note in retriever.checkpoint.notes:
                click.echo(f"note: {note}", err=True)
        click.echo(json.dumps(result.to_dict(scene=str(scene)), indent=2) if fmt == "json" else
                   format_look(result, scene=str(scene), k=k, has_presence=retriever.checkpoint.has_presence))
        draw = write_look_sheet
    else:
        k = defaults.K if k is None else k
        result = retriever.retrieve(img, k=k, candidates=candidates, category=category)
        if fmt == "json":
            click.echo(json.dumps([h.to_dict() for h in result.hits], indent=2))
        else:
            click.echo(format_table(result, scene=str(scene), n_products=len(retriever)))
        draw = write_sheet
    if sheet is not None:
        try:
            path = draw(result, sheet, scene=str(scene))
        except OSError as exc:
            raise ArtifactError(f"cannot write sheet {sheet}: {exc.strerror or exc}") from None
        click.echo(f"sheet written to {path}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
