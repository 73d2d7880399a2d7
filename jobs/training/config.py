"""The training job's settings: one frozen config, saved beside every checkpoint and read back tolerantly."""
from __future__ import annotations

from dataclasses import dataclass

from common import defaults
from common.config import JobConfig
from common.errors import InputError
from pipeline.backbones import BACKBONES
from pipeline.distances import TEMPERATURE
from pipeline.scene_crops import EXCLUSION_MODES

MODES = ("frozen", "finetune")
LR_SCHEDULES = ("cosine", "constant")
SELECT_ON = ("fitb+hr@10", "hr@10")
HYBRID_FORMS = ("fitted", "paper")
LOSSES = ("triplet", "softmax")
MINING = ("random", "hard")
ATTENTION = ("paper", "sharpness")
NEGATIVES_FROM = ("auto", "pair", "batch")


@dataclass(frozen=True)
class TrainConfig(JobConfig):
    """Every setting of a run; saved as config.json beside the checkpoint."""

    seed: int = defaults.SEED
    data_seed: int | None = None    # the split, the image views and the queries (None: `seed`); a fixed one
                                    #   compares training seeds on the same data and shares their feature cache
    hold_out_from: str | None = None   # a run folder whose validation and test scenes this run holds out too,
                                       #   training on every other scene (its data seed becomes data_seed)
    backbone: str = defaults.TRAIN_BACKBONE
    backbone_weights: str = defaults.BACKBONE_WEIGHTS
    mode: str = "frozen"            # frozen: heads on cached features; finetune: end to end
    dim: int = defaults.DIM
    hidden: int = defaults.HIDDEN   # 0: linear heads (an MLP with this many hidden units otherwise)
    dropout: float = defaults.DROPOUT
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    backbone_lr: float = 1e-4       # finetune only
    weight_decay: float = 1e-4
    margin: float = defaults.MARGIN
    negatives: int = 16             # same-category negatives per (scene, positive)
    negatives_from: str = "auto"    # pair: each scene ranks its positive against its own K | batch: against every
                                    #   product of the batch of its category that is not in it (frozen mode) |
                                    #   auto: batch in frozen mode, pair in finetune (docs/quality.md, sixth round)
    loss: str = "softmax"           # softmax (InfoNCE over the negatives, temperature) | triplet (margin); the
                                    #   default since the fourth round (docs/quality.md), triplet with 4 before
    temperature: float = TEMPERATURE   # of the softmax loss (pipeline.distances)
    per_half_loss: bool = False     # also the loss on d_g and on d_l alone, beside the hybrid's
    symmetric_loss: bool = False    # with shared negatives and the softmax: also each positive product ranking its
                                    #   scene against the batch's other scenes (docs/quality.md, eighth round)
    mining: str = "random"          # random | hard: after warmup_epochs, half the negatives from the model's
    warmup_epochs: int = 5          #   own `hard_pool` nearest wrong products of the category (frozen mode)
    hard_pool: int = 20
    scene_views: int = 1            # augmented views per training scene, besides the clean one
    product_views: int = 1          # augmented views per training positive, besides the clean one
    exclusion: str = defaults.EXCLUSION   # how the positive is left out of its scene: mask | crop
    lr_schedule: str = "cosine"     # cosine (decays to 0 over `epochs`) | constant
    select_on: str = "fitb+hr@10"   # validation score that picks the checkpoint: fitb+hr@10 | hr@10
    val_queries: int = 200
    presence_masked: bool = True    # the presence head also learns from the masked training views (frozen mode)
    attention: str = "sharpness"    # sharpness: softmax_r(-s_c ||f_i[r] - e_c||^2), s_c learnt per category |
                                    #   paper: s_c = 1 (docs/quality.md, fourth round)
    hybrid: str = "fitted"          # fitted: a local weight per category from validation | paper: (d_g + d_l) / 2
    device: str = "auto"
    workers: int | None = None

    @property
    def shares_negatives(self) -> bool:
        """Whether each scene ranks against every product of its batch (negatives_from batch, or auto when frozen)."""
        return self.negatives_from == "batch" or (self.negatives_from == "auto" and self.mode == "frozen")

    @property
    def split_seed(self) -> int:
        """The seed of everything on the data side: the scene split, the augmented views, the queries' negatives."""
        return self.seed if self.data_seed is None else self.data_seed

    def check(self) -> TrainConfig:
        """This config, or an InputError naming the first setting a run cannot use."""
        choices = {"mode": MODES, "backbone": BACKBONES, "exclusion": EXCLUSION_MODES,
                   "lr_schedule": LR_SCHEDULES, "select_on": SELECT_ON, "hybrid": HYBRID_FORMS, "loss": LOSSES,
                   "mining": MINING, "attention": ATTENTION,
                   "negatives_from": NEGATIVES_FROM}
        for name, known in choices.items():
            if getattr(self, name) not in known:
                raise InputError(f"unknown {name} {getattr(self, name)!r}; known: {', '.join(known)}")
        at_least = {"epochs": 1, "batch_size": 1, "negatives": 1, "dim": 1, "hidden": 0, "scene_views": 0,
                    "product_views": 0, "val_queries": 0,
                    "warmup_epochs": 0, "hard_pool": 1}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise InputError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.negatives_from == "batch" and self.mode != "frozen":
            raise InputError("--negatives-from batch is built for --mode frozen only")
        if self.symmetric_loss and not (self.shares_negatives and self.loss == "softmax"):
            raise InputError("--symmetric-loss needs the softmax loss over shared negatives (--loss softmax, "
                             "--negatives-from batch or auto in frozen mode)")
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        return self
