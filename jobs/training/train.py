"""The training job: one loop for every mode (seeding, resume, schedule, validation, checkpoint choice, summary)."""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch

from common import defaults
from common.devices import DEVICE_CHOICES, resolve_device
from common.errors import InputError
from common.progress import progress_bar
from jobs.data.layouts import DONE_FILE
from jobs.training.calibrate import calibrate_run
from jobs.training.config import (
    ATTENTION,
    HYBRID_FORMS,
    LOSSES,
    LR_SCHEDULES,
    MINING,
    MODES,
    NEGATIVES_FROM,
    TrainConfig,
)
from jobs.training.finetune import FineTune
from jobs.training.frozen import FrozenHeads
from jobs.training.presence import train_presence
from jobs.training.resume import Progress, load_state, save_state
from jobs.training.run_layout import RunLayout, TrainSummary
from jobs.training.schedule import selection_score, set_epoch_lr
from jobs.training.strategy import StepStrategy
from jobs.training.training_data import (
    Readable,
    TrainingData,
    hold_out_like,
    prepare_data,
    trainable_pairs,
    usable_queries,
)
from pipeline.backbones import BACKBONES
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.embedder import StyleEmbedder
from pipeline.evaluation import (
    Query,
    QueryEmbeddings,
    category_lookup,
    distance_matrices,
    fit_local_weights,
    score_queries,
)
from pipeline.scene_crops import EXCLUSION_MODES

STRATEGIES: dict[str, type[StepStrategy]] = {"frozen": FrozenHeads, "finetune": FineTune}
Validate = Callable[[StyleEmbedder], dict]


def strategy_for(cfg: TrainConfig, data: TrainingData, device: torch.device) -> StepStrategy:
    """The step strategy of `cfg.mode` (training, and evaluation's query embeddings)."""
    if cfg.mode not in STRATEGIES:
        raise InputError(f"unknown mode {cfg.mode!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[cfg.mode](cfg, data, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hybrid_validation(queries: list[Query],
                      query_embeddings: Callable[[StyleEmbedder, list[Query]], QueryEmbeddings]) -> Validate:
    """validate(embedder) -> the hybrid method's scores on `queries` ({} when there are none)."""
    def validate(embedder: StyleEmbedder) -> dict:
        if not queries:
            return {}
        emb = query_embeddings(embedder, queries)
        return score_queries(queries, emb, category_lookup(embedder), methods=("hybrid",))["hybrid"]
    return validate


def fit(strategy: StepStrategy, embedder: StyleEmbedder, optimizer: torch.optim.Optimizer,
        pools: dict[int, list[str]], validate: Validate, *, run: RunLayout, checkpoint_config: dict,
        done: Progress, progress: bool = True) -> Progress:
    """Train epochs `done.epoch` .. cfg.epochs - 1; after each, validate, keep the best checkpoint, save state."""
    cfg = strategy.cfg
    bar = progress_bar(range(done.epoch, cfg.epochs), desc=strategy.name, unit="epoch", disable=not progress,
               initial=done.epoch, total=cfg.epochs)
    for epoch in bar:
        embedder.train()
        set_epoch_lr(optimizer, cfg, epoch)
        losses, t0 = [], time.time()
        for batch in strategy.epoch_batches(embedder, pools, epoch):
            loss, n_pairs = strategy.batch_loss(embedder, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            done.triplets += n_pairs
        done.train_seconds += time.time() - t0
        val = validate(embedder)
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), **{f"val_{k}": v for k, v in val.items()}}
        done.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val_hr10=f"{val.get('hr@10', float('nan')):.3f}",
                        val_fitb=f"{val.get('fitb_expected', float('nan')):.3f}")
        score = selection_score(val, record["loss"], cfg.select_on)
        if done.best is None or score > tuple(done.best["score"]):
            sha = save_checkpoint(run.checkpoint, embedder, config=checkpoint_config,
                                  extra={"epoch": epoch + 1, "val": val})
            done.best = {"score": list(score), "epoch": epoch + 1, "sha256": sha}
        done.epoch = epoch + 1
        save_state(run.state, cfg=cfg, embedder=embedder, optimizer=optimizer, strategy=strategy,
                   progress=done)
    return done


def fit_hybrid(strategy: StepStrategy, data: TrainingData, readable: Readable, embedder: StyleEmbedder) -> dict:
    """The hybrid distance's local weight per category, fitted on every usable validation query and set on
    `embedder` (cfg.hybrid "fitted"); "paper" keeps w = 1/2. Returns what the checkpoint records."""
    cfg = strategy.cfg
    queries = usable_queries(data, data.val_pairs, cfg.split_seed, readable)
    if cfg.hybrid == "paper" or not queries:
        return {"form": "paper", "weights": embedder.local_weights_by_name(),
                **({} if queries else {"note": "no validation queries to fit on"})}
    emb = strategy.query_embeddings(embedder, queries)
    matrices = distance_matrices(emb, queries, category_lookup(embedder), ("global", "local"))
    fitted = fit_local_weights(matrices["global"], matrices["local"], queries, emb)
    embedder.set_local_weights(fitted["weights"])
    return {"form": "fitted", **fitted}


def complete_checkpoint(strategy: StepStrategy, data: TrainingData, readable: Readable, run: RunLayout,
                        device: torch.device) -> tuple[str, dict]:
    """Once the style heads are chosen: the hybrid's local weights (fitted on validation) and the category-presence
    head, trained on their checkpoint's backbone features and saved into it, then the classifier's calibration
    beside it (calibration.json, of the fitted hybrid).

    All come after the training loop and draw nothing from its random streams, so the style heads,
    the checkpoint choice and every ranking figure are those of a run without them.
    Returns the final checkpoint's sha256 and what the summary records of them.
    """
    ckpt = load_checkpoint(run.checkpoint, with_backbone=strategy.trains_backbone, device=device)
    hybrid = fit_hybrid(strategy, data, readable, ckpt.embedder)
    source = Path(ckpt.config.get("data", ""))
    # The page and the CLIs warn when a model only ever saw the generated sample (its marker file says so).
    learnt_from = {"kind": "sample" if (source / DONE_FILE).is_file() else "real", "data": str(source)}
    presence = train_presence(ckpt.embedder, data, run.root, strategy.cfg, device)
    sha = save_checkpoint(run.checkpoint, ckpt.embedder, config=ckpt.config,
                          extra={**ckpt.extra, "hybrid": hybrid, "presence": presence, "training_data": learnt_from})
    calibrations = calibrate_run(run.root, data, strategy.cfg, strategy, ckpt.embedder, readable, checkpoint_sha256=sha)
    return sha, {"hybrid": hybrid, "presence": presence, "classifier_val": calibrations.info.get("val", {})}


def train(data_dir, out_dir, *, config: TrainConfig | None = None, resume: bool = False,
          progress: bool = True) -> TrainSummary:
    """Train on the pairs of `data_dir`; write checkpoint.pt (best on validation), config.json, split.json,
    training_state.pt (for --resume) and train_summary.json; return the summary."""
    cfg = (config or TrainConfig()).check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = hold_out_like(cfg, data_dir, out_dir)
    run = RunLayout(out_dir)
    started = time.time()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = prepare_data(data_dir, out_dir, cfg)
    strategy = strategy_for(cfg, data, device)
    readable = strategy.prepare(out_dir)
    seed_everything(cfg.seed)  # again: computing the cache (or not, when it exists) draws from torch's RNG
    embedder, optimizer = strategy.build()
    pools = trainable_pairs(data, readable)
    if not pools:
        raise InputError(f"{data_dir}: no training pair has a readable scene, positive and negatives")
    val_queries = usable_queries(data, data.val_pairs, cfg.split_seed, readable)[: cfg.val_queries]
    done = Progress()
    if resume and run.state.is_file():
        done = load_state(run.state, cfg=cfg, embedder=embedder, optimizer=optimizer, strategy=strategy)
    done = fit(strategy, embedder, optimizer, pools, hybrid_validation(val_queries, strategy.query_embeddings),
               run=run, checkpoint_config={**cfg.to_dict(), "data": str(data_dir)}, done=done,
               progress=progress)
    best = done.best
    sha, extras = (best.get("sha256"), {}) if best is None else \
        complete_checkpoint(strategy, data, readable, run, device)
    summary = TrainSummary(checkpoint=str(run.checkpoint), best_epoch=best["epoch"] if best else None,
                           checkpoint_sha256=sha, history=done.history, **extras,
                           n_train_pairs=len(pools), n_val_queries=len(val_queries),
                           triplets_per_second=round(done.triplets / max(done.train_seconds, 1e-9), 1),
                           seconds=round(time.time() - started, 1), device=str(device))
    run.write_summary(summary)
    return summary


@click.command("train")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=defaults.SAMPLE_DIR, show_default=True,
              help="dataset folder in the Shop-the-Look formats (sample or `ctl data stl` output)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=defaults.RUN_DIR,
              show_default=True)
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--mode", type=click.Choice(MODES), default=TrainConfig.mode, show_default=True)
@click.option("--backbone", type=click.Choice(BACKBONES), default=TrainConfig.backbone, show_default=True)
@click.option("--backbone-weights", default=TrainConfig.backbone_weights, show_default=True,
              help="imagenet, or a path to a local weights file")
@click.option("--epochs", type=click.IntRange(min=1), default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=TrainConfig.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=TrainConfig.lr, show_default=True)
@click.option("--dim", type=click.IntRange(min=1), default=TrainConfig.dim, show_default=True)
@click.option("--hidden", type=click.IntRange(min=0), default=TrainConfig.hidden, show_default=True,
              help="hidden units of the global and product heads (0: linear heads)")
@click.option("--dropout", type=click.FloatRange(0.0, 1.0, max_open=True), default=TrainConfig.dropout,
              show_default=True)
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=TrainConfig.lr_schedule, show_default=True)
@click.option("--negatives", type=click.IntRange(min=1), default=TrainConfig.negatives, show_default=True)
@click.option("--negatives-from", type=click.Choice(NEGATIVES_FROM), default=TrainConfig.negatives_from,
              show_default=True, help="pair: each scene against its own --negatives; batch: against every product "
                                      "of the batch of its category that is not in it (frozen mode); auto: batch "
                                      "when frozen, pair when fine-tuning")
@click.option("--exclusion", type=click.Choice(EXCLUSION_MODES), default=TrainConfig.exclusion, show_default=True,
              help="leave the product out of its scene by masking its box or cropping to the largest band beside it")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default=TrainConfig.device, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="image decoding workers (default: chosen for the mode and the device)")
@click.option("--loss", type=click.Choice(LOSSES), default=TrainConfig.loss, show_default=True,
              help="triplet (margin) or softmax (InfoNCE over the negatives)")
@click.option("--per-half-loss", is_flag=True, help="also train each half (global, local) with a loss of its own")
@click.option("--symmetric-loss", is_flag=True,
              help="also rank each positive product's scene against the batch's other scenes (softmax over shared "
                   "negatives only)")
@click.option("--mining", type=click.Choice(MINING), default=TrainConfig.mining, show_default=True,
              help="hard: after --warmup-epochs, half the negatives are the model's own nearest wrong products")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=TrainConfig.warmup_epochs, show_default=True)
@click.option("--hybrid", type=click.Choice(HYBRID_FORMS), default=TrainConfig.hybrid, show_default=True,
              help="fitted: a local weight per category from validation; paper: (d_g + d_l) / 2")
@click.option("--attention", type=click.Choice(ATTENTION), default=TrainConfig.attention, show_default=True,
              help="sharpness: each category's attention over the scene's regions learns how sharp it is; "
                   "paper: softmax(-||f_i - e_c||^2) with a unit e_c")
@click.option("--hold-out-from", "hold_out_from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="hold out that run's validation and test scenes and train on every other scene of "
                                 "--data: more looks scored on the same held-out looks (`ctl compare` the two runs)")
@click.option("--resume", is_flag=True, help="continue an interrupted run in --out")
def train_command(data_dir, out_dir, seed, mode, backbone, backbone_weights, epochs, batch_size, lr, dim, hidden,
                  dropout, lr_schedule, negatives, negatives_from, exclusion, device, workers, loss, per_half_loss,
                  symmetric_loss, mining, warmup_epochs, hybrid, attention, hold_out_from, resume):
    """Train the style embedding with a hybrid-distance ranking loss (triplet or softmax)."""
    cfg = TrainConfig(seed=seed, mode=mode, backbone=backbone, backbone_weights=backbone_weights, epochs=epochs,
                      batch_size=batch_size, lr=lr, dim=dim, hidden=hidden, dropout=dropout,
                      lr_schedule=lr_schedule, negatives=negatives, negatives_from=negatives_from,
                      exclusion=exclusion, device=device,
                      workers=workers, loss=loss, per_half_loss=per_half_loss, symmetric_loss=symmetric_loss,
                      mining=mining, warmup_epochs=warmup_epochs, hybrid=hybrid, attention=attention,
                      hold_out_from=str(hold_out_from) if hold_out_from else None)
    summary = train(data_dir, out_dir, config=cfg, resume=resume)
    last = summary.history[-1] if summary.history else {}
    click.echo(f"trained {len(summary.history)} epochs in {summary.seconds} s on {summary.device}; "
               f"best epoch {summary.best_epoch} -> {summary.checkpoint} "
               f"(last loss {last.get('loss', float('nan')):.3f})")
    check = (summary.hybrid or {}).get("out_of_fold")
    if check:
        click.echo(f"hybrid weights per category: out of fold on validation {check['fitted']:.3f} against "
                   f"{check['paper']:.3f} for the paper's 1/2 (expected FITB + hit@10 a query): "
                   + ("ahead" if check["fitted_ahead"] else
                      "not ahead, so validation cannot tell them from 1/2 (`--hybrid paper` trains that form)"))
