"""`ctl demo`: the whole path on the embedded sample, each stage skipped when its output is up to date."""
from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import click

from common import defaults
from common.devices import DEVICE_CHOICES, resolve_device
from common.errors import ArtifactError
from common.files import sha256_of
from common.naming import match_category, short_category
from index.build import build_index
from index.embedding_shards import MANIFEST
from index.layout import INFO_FILE, IndexDirError, read_info, resolve
from jobs.catalog.embed_catalog import EmbedCatalogConfig, EmbedCatalogError, embed_catalog
from jobs.cli_errors import OneLineCommand
from jobs.data.layouts import CATALOG, DONE_FILE, SCENE_DIR
from jobs.data.sample import generate
from jobs.evaluation.evaluate import format_comparisons, format_extras, report_files, run_evaluation
from jobs.evaluation.evaluate import format_table as metrics_table
from jobs.retrieve_cli import format_look, format_table, write_look_sheet, write_sheet
from jobs.training.config import TrainConfig
from jobs.training.run_layout import RunLayout
from jobs.training.train import train
from pipeline.checkpoint import CheckpointError, has_presence_head
from retrieval.retriever import Retriever

STAGES = 6


def _stage(n: int, name: str, message: str) -> None:
    click.echo(f"[{n}/{STAGES}] {name:<14} {message}")


def _seconds(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# -- stages ---------------------------------------------------------------------------------------

def stage_sample(sample_dir: Path, seed: int) -> None:
    started = time.perf_counter()
    result = generate(sample_dir, seed=seed)
    counts = result.get("counts", {})
    what = f"{counts.get('scenes', '?')} scenes, {counts.get('products', '?')} products"
    _stage(1, "sample data", f"up to date ({what})" if result.get("skipped") else f"wrote {what} ({_seconds(started)})")


def _training_is_current(sample_dir: Path, run_dir: Path, checkpoint: Path, seed: int) -> bool:
    """A finished run (train_summary.json naming this checkpoint's sha) newer than the sample, same seed."""
    run = RunLayout(run_dir)
    try:
        summary, config = run.read_summary(), run.read_config()
    except ArtifactError:
        return False
    if not checkpoint.is_file() or summary.checkpoint_sha256 not in (None, sha256_of(checkpoint)):
        return False
    if config.get("seed", seed) != seed:
        return False
    try:
        if not has_presence_head(checkpoint):   # a run from before the presence head: train it again
            return False
    except CheckpointError:
        return False
    return _mtime(run.summary) >= _mtime(sample_dir / DONE_FILE)


def stage_train(sample_dir: Path, run_dir: Path, checkpoint: Path, seed: int, device: str) -> None:
    if _training_is_current(sample_dir, run_dir, checkpoint, seed):
        _stage(2, "train", f"up to date ({checkpoint})")
        return
    _stage(2, "train", f"training on {sample_dir} (frozen backbone, cached features) ...")
    started = time.perf_counter()
    summary = train(sample_dir, run_dir, config=TrainConfig(seed=seed, device=device))
    _stage(2, "train", f"best epoch {summary.best_epoch} of {len(summary.history)} "
                       f"-> {checkpoint} ({_seconds(started)})")


def stage_evaluate(run_dir: Path, sha: str, device: str) -> None:
    report_file = run_dir / report_files("test")["report"]
    report = _read_json(report_file)
    if report is None or report.get("checkpoint_sha256") != sha:
        started = time.perf_counter()
        report = run_evaluation(run_dir, device=device)
        done = f"wrote {report_file} ({_seconds(started)})"
    else:
        done = f"up to date ({report_file})"
    _stage(3, "evaluate", done + f" ({report.get('n_queries', '?')} held-out test queries)")
    methods = report.get("methods")
    if methods:
        for line in metrics_table(methods).splitlines():
            click.echo(f"      {line}")
        for line in format_comparisons(report.get("comparisons", {})).splitlines():
            click.echo(f"      {line}")
        for line in format_extras(report).splitlines():
            click.echo(f"      {line}")


def stage_embed(catalog: Path, checkpoint: Path, emb_dir: Path, device: str) -> None:
    started = time.perf_counter()
    try:
        summary = embed_catalog(catalog, checkpoint, emb_dir, config=EmbedCatalogConfig(device=device))
    except EmbedCatalogError as exc:
        # The demo owns the sample's embeddings: output made with an older checkpoint or sample is replaced.
        _stage(4, "embed catalog", f"re-embedding ({exc})")
        summary = embed_catalog(catalog, checkpoint, emb_dir, config=EmbedCatalogConfig(device=device), overwrite=True)
    if summary.get("noop"):
        _stage(4, "embed catalog", f"up to date ({summary['embedded']} products in {emb_dir})")
    else:
        _stage(4, "embed catalog", f"embedded {summary['embedded']} products, rejected {summary['rejected']} "
                                   f"({_seconds(started)}, {summary['images_per_s']:.1f} img/s)")


def _index_is_current(emb_dir: Path, index_dir: Path, sha: str) -> bool:
    """The current build was made from this checkpoint, after the embeddings were last written."""
    try:
        build, _ = resolve(index_dir)
        info = read_info(index_dir)
    except IndexDirError:
        return False
    return info.checkpoint_sha256 == sha and _mtime(build / INFO_FILE) >= _mtime(emb_dir / MANIFEST)


def stage_index(emb_dir: Path, index_dir: Path, sha: str) -> None:
    if _index_is_current(emb_dir, index_dir, sha):
        _stage(5, "build index", f"up to date ({index_dir})")
        return
    started = time.perf_counter()
    info = build_index(emb_dir, index_dir)
    _stage(5, "build index", f"{info.factory} over {info.n} products -> {index_dir}/{info.version} "
                             f"({_seconds(started)})")


def pick_scene(sample_dir: Path, run_dir: Path) -> Path:
    """A held-out test scene of the run's split (never seen in training), else any scene of the sample."""
    scene_dir = sample_dir / SCENE_DIR
    try:
        test = RunLayout(run_dir).read_split().test
    except ArtifactError:
        test = ()
    for sid in sorted(test):
        path = scene_dir / f"{sid}.jpg"
        if path.is_file():
            return path
    scenes = sorted(scene_dir.glob("*.jpg"))
    if not scenes:
        raise IndexDirError(f"no scene images in {scene_dir}; rerun `ctl sample-data`")
    return scenes[0]


def _command(name: str) -> str:
    """How to call one of our console scripts from here: bare if it is on PATH, else by its path."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name)
    if beside.exists() and (found is None or Path(found).resolve() != beside.resolve()):
        try:
            return str(beside.relative_to(Path.cwd()))
        except ValueError:
            return str(beside)
    return name


def stage_retrieve(scene: Path, checkpoint: Path, index_dir: Path, out_dir: Path, k: int, device: str):
    started = time.perf_counter()
    retriever = Retriever.load(checkpoint=checkpoint, index_dir=index_dir, device=device)
    look = retriever.look(scene, k=defaults.LOOK_K)
    look_sheet = write_look_sheet(look, out_dir / "look.png", scene=str(scene))
    result = retriever.retrieve(scene, k=k)
    sheet = write_sheet(result, out_dir / "sheet.png", scene=str(scene))
    _stage(6, "retrieve", f"the whole look ({len(look)} categories) and the top {len(result)} for held-out scene "
                          f"{scene.name}, sheets {look_sheet} and {sheet} ({_seconds(started)})")
    click.echo("")
    click.echo(format_look(look, scene=str(scene), k=defaults.LOOK_K,
                           has_presence=retriever.checkpoint.has_presence))
    click.echo("")
    click.echo("The nearest products of any category (flat mode):")
    click.echo(format_table(result, scene=str(scene), n_products=len(retriever)))
    category = result.hits[0].category if result.hits else result.categories[0]
    short = short_category(category)   # suggest the short name where it is unambiguous
    if match_category(short, retriever.categories) == category:
        category = short
    product = result.hits[0].product_id if result.hits else None
    return look_sheet, category, product


@click.command("demo", cls=OneLineCommand)
@click.option("--seed", type=click.IntRange(min=0), default=defaults.SEED, show_default=True,
              help="sample data and training seed")
@click.option("--k", "k", type=click.IntRange(min=1), default=defaults.DEMO_K, show_default=True,
              help="products in the demo retrieval")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
def demo_command(seed: int, k: int, device: str) -> None:
    """Run the whole path on the embedded sample: data, train, evaluate, embed, index, the whole look."""
    dev = resolve_device(device).type
    sample_dir, run_dir, checkpoint = defaults.SAMPLE_DIR, defaults.RUN_DIR, defaults.CHECKPOINT
    emb_dir, index_dir = defaults.EMBEDDINGS_DIR, defaults.INDEX_DIR
    started = time.perf_counter()
    stage_sample(sample_dir, seed)
    stage_train(sample_dir, run_dir, checkpoint, seed, dev)
    sha = sha256_of(checkpoint)
    stage_evaluate(run_dir, sha, dev)
    stage_embed(sample_dir / CATALOG, checkpoint, emb_dir, dev)
    stage_index(emb_dir, index_dir, sha)
    scene = pick_scene(sample_dir, run_dir)
    look_sheet, category, product = stage_retrieve(scene, checkpoint, index_dir, defaults.DEMO_DIR, k, dev)

    retrieve = _command("ctl-retrieve")
    q = shlex.quote
    click.echo("")
    click.echo(f"demo done in {_seconds(started)}. The sheet {look_sheet} shows, for each category missing from")
    click.echo("the scene, where the model looked and the products it recommends. What to run next:")
    click.echo(f"  {retrieve} --scene {q(str(scene))} --look --include-present --sheet look.png")
    click.echo(f"  {retrieve} --scene {q(str(scene))} --k 20          # nearest products of any category")
    click.echo(f"  {retrieve} --scene {q(str(scene))} --category {q(category)} --sheet one-category.png")
    if product is not None:
        click.echo(f"  {retrieve} --scene {q(str(scene))} --product {q(product)}   # does it complete the look?")
    click.echo(f"  {retrieve} --scene YOUR_PHOTO.jpg --format json")
    click.echo("      (note: the demo's model learnt from the generated sample only, so on a real photo its")
    click.echo("      presence and recommendations mean little; for real photos train on real looks:")
    click.echo("      `ctl data stl` + `ctl data fetch`, or your own catalogue with `ctl data catalog`)")
    click.echo("  make evaluate   # FITB and HR@K of hybrid vs global vs local distances on the test split")
    click.echo("  make bench      # query latency against one backbone forward, and job throughput")
