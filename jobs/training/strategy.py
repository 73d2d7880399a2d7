"""What the frozen and fine-tune modes do differently, behind one interface the training loop drives.

The loop (jobs.training.train) owns everything the modes share: seeding, resume, the learning-rate
schedule, validation, checkpoint choice and the summary. A strategy owns only what differs: which
model and optimizer groups, how an epoch's batches are made, how a batch becomes a loss, and how
query embeddings are computed for validation and evaluation.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from jobs.training.config import TrainConfig
from jobs.training.training_data import Readable, TrainingData
from pipeline.distances import (
    all_distances,
    all_distances_shared,
    hybrid_distance,
    shared_softmax_loss,
    shared_softmax_loss_by_product,
    shared_triplet_loss,
    softmax_loss,
    triplet_loss,
)
from pipeline.embedder import StyleEmbedder
from pipeline.evaluation import Query, QueryEmbeddings


class StepStrategy:
    """One training mode. Built cheaply from (config, data, device); nothing heavy runs before `prepare`."""

    name = "train"            # the progress bar's label
    trains_backbone = False   # True: the checkpoint carries the backbone, evaluation loads it

    def __init__(self, cfg: TrainConfig, data: TrainingData, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device

    def prepare(self, out_dir) -> Readable:
        """Whatever must exist before training (e.g. a feature cache); returns which images decode."""
        raise NotImplementedError

    def build(self) -> tuple[StyleEmbedder, torch.optim.Optimizer]:
        """The model to train and its optimizer (with this mode's parameter groups)."""
        raise NotImplementedError

    def epoch_batches(self, embedder: StyleEmbedder, pools: dict[int, list[str]], epoch: int) -> Iterable[Any]:
        """The batches of epoch `epoch` (0-based) over the training pairs `pools` (pair -> negatives pool)."""
        raise NotImplementedError

    def batch_loss(self, embedder: StyleEmbedder, batch) -> tuple[torch.Tensor, int]:
        """The batch's triplet loss and how many (scene, positive) pairs it holds."""
        raise NotImplementedError

    def query_embeddings(self, embedder: StyleEmbedder, queries: list[Query]) -> QueryEmbeddings:
        """Clean-view embeddings of the queries' scenes and candidates, computed the way this mode trains."""
        raise NotImplementedError

    def rng_state(self) -> Any:
        """The strategy's own random state, saved for --resume (None: it has none across epochs)."""
        return None

    def load_rng_state(self, state: Any) -> None:
        """Restore what `rng_state` returned."""


def hybrid_triplet_loss(f_s: torch.Tensor, f_i: torch.Tensor, f_p: torch.Tensor, e_c: torch.Tensor,
                        margin: float) -> torch.Tensor:
    """Triplet loss on hybrid distances: f_p is B x (1 + K) x d with the positive first, e_c is B x d
    (the positive's category). Computed in float32 whatever precision the embeddings came in."""
    e_c = e_c.unsqueeze(1).expand(-1, f_p.shape[1], -1)
    d = hybrid_distance(f_s.float(), f_i.float(), f_p.float(), e_c.float())
    return triplet_loss(d[:, 0], d[:, 1:], margin)


def ranking_loss(f_s: torch.Tensor, f_i: torch.Tensor, f_p: torch.Tensor, e_c: torch.Tensor, cfg: TrainConfig
                 ) -> torch.Tensor:
    """The loss `cfg` asks for: triplet (margin) or softmax (InfoNCE over the K negatives) on the paper's hybrid
    distance, plus the same loss on each half when cfg.per_half_loss (so neither half rides on the other).

    f_p is B x (1 + K) x d with the positive first, e_c is B x d (the positive's category); float32 throughout.
    """
    e_c = e_c.unsqueeze(1).expand(-1, f_p.shape[1], -1)
    d = all_distances(f_s.float(), f_i.float(), f_p.float(), e_c.float())
    names = ("paper", "global", "local") if cfg.per_half_loss else ("paper",)
    if cfg.loss == "softmax":
        return sum(softmax_loss(d[n][:, 0], d[n][:, 1:], cfg.temperature) for n in names)
    return sum(triplet_loss(d[n][:, 0], d[n][:, 1:], cfg.margin) for n in names)


def shared_ranking_loss(f_s: torch.Tensor, f_i: torch.Tensor, f_p: torch.Tensor, e_k: torch.Tensor,
                        category_of: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                        cfg: TrainConfig) -> torch.Tensor:
    """ranking_loss with the batch's products shared: every scene against every product of the batch (f_p:
    M x d, category_of: M indices into e_k: n_categories x d), row b's positive at column positive[b] and its
    negatives where negatives[b] (B x M) is set, so each scene ranks against all of the batch's products of its
    category that are not in it instead of its own K. Same distances (the paper's hybrid, and each half when
    cfg.per_half_loss), same losses; float32 throughout. cfg.symmetric_loss: the mean of the scene side and the
    product side (shared_softmax_loss_by_product) of each softmax."""
    d = all_distances_shared(f_s.float(), f_i.float(), f_p.float(), e_k.float(), category_of)
    names = ("paper", "global", "local") if cfg.per_half_loss else ("paper",)
    if cfg.loss == "softmax" and cfg.symmetric_loss:
        return sum((shared_softmax_loss(d[n], positive, negatives, cfg.temperature)
                    + shared_softmax_loss_by_product(d[n], positive, negatives, cfg.temperature)) / 2 for n in names)
    if cfg.loss == "softmax":
        return sum(shared_softmax_loss(d[n], positive, negatives, cfg.temperature) for n in names)
    return sum(shared_triplet_loss(d[n], positive, negatives, cfg.margin) for n in names)
