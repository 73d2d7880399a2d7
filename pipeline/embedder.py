"""The style embedder: scene-global, scene-region, product and category embeddings in one unit-sphere space."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common import defaults
from pipeline.backbones import BACKBONE_CHANNELS, Backbone, build_backbone, pooled
from pipeline.distances import PAPER_LOCAL_WEIGHT

# The attention's sharpness is exp(GAIN * theta): Adam moves theta by about the learning rate per step, so
# without a gain ~480 steps of the sample's training (lr 1e-3) could take the sharpness from 1 to 1.6 at most.
SHARPNESS_GAIN = 10.0


class PresenceHead(nn.Module):
    """Which categories a scene already shows: a multi-label linear classifier on the backbone map.

    Its own parameters, apart from the style heads: trained after them (``ctl train``), it cannot change
    them. The features are standardised with the training scenes' mean and spread (buffers), then one
    logit per category of the vocabulary. Weights start at zero: no draw from any random stream.

    Two poolings (the `regions` buffer says which, so it travels in the checkpoint): 0, the classifier on
    the map's average (heads trained before region pooling); 1, the classifier on every region of the map,
    pooled by log-mean-exp over the regions. An item covers a few of the 7 x 7 regions: averaged with the
    rest of the scene its evidence is diluted, while log-mean-exp lets the regions that show it carry the
    logit (between the mean and the max, and smooth, so every region gets a gradient).
    """

    def __init__(self, channels: int, n_categories: int, *, regions: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_categories, channels))
        self.bias = nn.Parameter(torch.zeros(n_categories))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        # Per category: the probability at which it counts as present (fitted on validation for precision
        # of "present"; 0.5 everywhere until then, and in checkpoints older than the fit).
        self.register_buffer("threshold", torch.full((n_categories,), defaults.PRESENCE_THRESHOLD))
        self.register_buffer("regions", torch.tensor(1.0 if regions else 0.0))

    @property
    def pools_regions(self) -> bool:
        return bool(self.regions.item())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """N x C x h x w maps (or N x C pooled features, for the average-pooling head) -> N x K logits."""
        features = features.float()
        if not self.pools_regions:
            vec = pooled(features) if features.ndim == 4 else features
            return F.linear((vec - self.mean) / self.scale, self.weight, self.bias)
        if features.ndim != 4:
            raise ValueError(f"a region-pooling presence head needs N x C x h x w maps, got {tuple(features.shape)}")
        return self.pool_regions(self.standardised_regions(features))

    def standardised_regions(self, maps: torch.Tensor) -> torch.Tensor:
        """N x C x h x w maps -> N x R x C regions, standardised (contiguous: training reuses it every step)."""
        return ((maps.float().flatten(2).transpose(1, 2) - self.mean) / self.scale).contiguous()

    def pool_regions(self, regions: torch.Tensor) -> torch.Tensor:
        """N x R x C standardised regions -> N x K logits: each region's logit, log-mean-exp over the regions."""
        logits = F.linear(regions, self.weight, self.bias)
        return torch.logsumexp(logits, dim=1) - math.log(regions.shape[1])


def _mlp(channels: int, hidden: int, dim: int, dropout: float) -> nn.Module:
    if hidden == 0:  # a linear head: far fewer weights to overfit a small set of pairs
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, dim))
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
    )


class StyleEmbedder(nn.Module):
    """Heads over a backbone's feature map; every output is L2-normalised.

    The backbone is optional so the heads can train on cached feature maps; `channels` is then
    the backbone's channel count.
    """

    def __init__(
        self,
        *,
        backbone: Backbone | None,
        backbone_name: str,
        channels: int,
        categories: Sequence[str],
        dim: int = defaults.DIM,
        hidden: int = defaults.HIDDEN,
        dropout: float = defaults.DROPOUT,
        freeze_backbone: bool = True,
        learn_sharpness: bool = False,
    ):
        super().__init__()
        if len(set(categories)) != len(categories) or not categories:
            raise ValueError("categories must be a non-empty list of distinct names")
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.channels = channels
        self.dim = dim
        self.hidden = hidden
        self.categories = list(categories)
        self.category_to_index = {c: i for i, c in enumerate(self.categories)}
        self.freeze_backbone = freeze_backbone
        self.scene_global = _mlp(channels, hidden, dim, dropout)
        # No dropout on the 49 regions: masking a 49xC map per step costs more than the layer itself.
        self.scene_local = nn.Linear(channels, dim)
        self.product = _mlp(channels, hidden, dim, dropout)
        self.category = nn.Embedding(len(self.categories), dim)
        # Per category, the log of the attention's sharpness over the scene's regions divided by
        # SHARPNESS_GAIN (0: the paper's attention, softmax_r(-||f_i[r] - e_c||^2)). Learnt only when asked:
        # a model trained without it keeps the paper's form, and checkpoints older than it load as 0.
        self.attention_log_sharpness = nn.Parameter(torch.zeros(len(self.categories)), requires_grad=learn_sharpness)
        # The hybrid distance's local weight per category, d_h = (1 - w) d_g + w d_l: the paper's 1/2 until
        # fitted on validation after training (a buffer, so it travels in the checkpoint with the heads).
        self.register_buffer("hybrid_local_weight", torch.full((len(self.categories),), PAPER_LOCAL_WEIGHT))
        # Optional, and attached only after the style heads are trained (attach_presence): checkpoints
        # written before it existed load without it.
        self.presence: PresenceHead | None = None
        if backbone is not None and freeze_backbone:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None and self.freeze_backbone:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def heads_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    # -- from backbone feature maps (also used on cached features) --------------------------------
    def scene_from_features(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N x C x h x w -> (f_s: N x d, f_i: N x (h*w) x d)."""
        if feature_map.ndim != 4 or feature_map.shape[1] != self.channels:
            raise ValueError(f"scene feature map must be N x {self.channels} x h x w, got {tuple(feature_map.shape)}")
        feature_map = feature_map.float()
        f_s = F.normalize(self.scene_global(pooled(feature_map)), dim=-1)
        regions = feature_map.flatten(2).transpose(1, 2)
        f_i = F.normalize(self.scene_local(regions), dim=-1)
        return f_s, f_i

    def product_from_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """N x C x h x w (or N x C pooled) -> f_p: N x d."""
        feature_map = feature_map.float()
        vec = pooled(feature_map) if feature_map.ndim == 4 else feature_map
        if vec.ndim != 2 or vec.shape[1] != self.channels:
            raise ValueError(f"product features must be N x {self.channels} (x h x w), got {tuple(feature_map.shape)}")
        return F.normalize(self.product(vec), dim=-1)

    def attach_presence(self, head: PresenceHead) -> None:
        """Give the embedder a category-presence head (over this backbone's channels and vocabulary)."""
        if head.weight.shape != (len(self.categories), self.channels):
            raise ValueError(f"presence head must be {len(self.categories)} x {self.channels}, "
                             f"got {tuple(head.weight.shape)}")
        self.presence = head.to(self.category.weight.device)

    def presence_probabilities(self, feature_map: torch.Tensor) -> torch.Tensor | None:
        """N x C x h x w (or N x C pooled) -> N x K probabilities that each category is in the scene;
        None without a presence head."""
        if self.presence is None:
            return None
        return torch.sigmoid(self.presence(feature_map))

    def category_embeddings(self, index: torch.Tensor) -> torch.Tensor:
        """e_c for category indices of any shape -> shape + (d,): a unit vector times the category's sharpness.

        The scene's regions f_i are unit vectors, so -||f_i - s u||^2 = 2 s <f_i, u> - 1 - s^2: against the
        paper's -||f_i - u||^2 (s = 1) only the attention's softmax is s times sharper, and e_c enters no
        distance but through the attention (pipeline.distances). A unit e_c can at best give its nearest
        region e^4 times the weight of an opposite one: over 49 regions it cannot single out one item.
        """
        sharpness = torch.exp(SHARPNESS_GAIN * self.attention_log_sharpness[index]).unsqueeze(-1)
        return sharpness * F.normalize(self.category(index), dim=-1)

    def attention_sharpness_by_name(self) -> dict[str, float]:
        """Category name -> the attention's sharpness s (1: the paper's attention)."""
        values = torch.exp(SHARPNESS_GAIN * self.attention_log_sharpness.detach()).tolist()
        return {c: float(v) for c, v in zip(self.categories, values, strict=True)}

    def local_weights(self, index: torch.Tensor) -> torch.Tensor:
        """The hybrid distance's local weight w for category indices of any shape -> that shape."""
        return self.hybrid_local_weight[index]

    def local_weights_by_name(self) -> dict[str, float]:
        """Category name -> the hybrid distance's local weight w."""
        return {c: float(w) for c, w in zip(self.categories, self.hybrid_local_weight.tolist(), strict=True)}

    def set_local_weights(self, weights: dict[str, float]) -> None:
        """Set the hybrid distance's local weight per category name (each in [0, 1]; others unchanged)."""
        for name, w in weights.items():
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"local weight of {name!r} must be in [0, 1], got {w}")
            self.hybrid_local_weight[self.category_to_index[name]] = float(w)

    def category_indices(self, names: Sequence[str]) -> torch.Tensor:
        unknown = sorted({n for n in names if n not in self.category_to_index})
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {self.categories}")
        return torch.tensor([self.category_to_index[n] for n in names], dtype=torch.long)

    # -- from images ------------------------------------------------------------------------------
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            raise RuntimeError("this embedder was built without a backbone (heads-only); attach one to embed images")
        return self.backbone(images)

    def encode_scenes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scene_from_features(self._features(images))

    def encode_products(self, images: torch.Tensor) -> torch.Tensor:
        return self.product_from_features(self._features(images))


def build_embedder(
    *,
    categories: Sequence[str],
    backbone: str = defaults.BACKBONE,
    backbone_weights: str = defaults.BACKBONE_WEIGHTS,
    with_backbone: bool = True,
    dim: int = defaults.DIM,
    hidden: int = defaults.HIDDEN,
    dropout: float = defaults.DROPOUT,
    freeze_backbone: bool = True,
    learn_sharpness: bool = False,
) -> StyleEmbedder:
    """Keyword-only factory; `with_backbone=False` gives heads only, for training on cached features."""
    if backbone not in BACKBONE_CHANNELS:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONE_CHANNELS)}")
    trunk = build_backbone(name=backbone, weights=backbone_weights) if with_backbone else None
    return StyleEmbedder(
        backbone=trunk, backbone_name=backbone, channels=BACKBONE_CHANNELS[backbone], categories=categories,
        dim=dim, hidden=hidden, dropout=dropout, freeze_backbone=freeze_backbone, learn_sharpness=learn_sharpness,
    )
