"""What retrieval answers: hits with their distances, a flat result, a whole look per category, an encoded scene."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from common.errors import InputError
from pipeline.distances import attention_weights


class RetrievalError(InputError):
    """A retrieval request that cannot be answered (bad arguments, a category the model does not know)."""


def attention_grid(weights: torch.Tensor) -> np.ndarray:
    """R attention weights as a side x side grid (float64, summing to 1); the regions are a square grid."""
    side = int(round(weights.numel() ** 0.5))
    if side * side != weights.numel():
        raise RetrievalError(f"scene has {weights.numel()} regions, not a square grid")
    return weights.reshape(side, side).cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class Hit:
    """One recommended product; distances are those of the one definition in pipeline.distances."""

    rank: int
    product_id: str
    category: str
    image_path: str | None
    score: float
    hybrid_distance: float
    global_distance: float
    local_distance: float
    row: int
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form printed by ``ctl-retrieve --format json``."""
        return {
            "rank": self.rank, "product_id": self.product_id, "category": self.category,
            "score": self.score, "hybrid_distance": self.hybrid_distance,
            "global_distance": self.global_distance, "local_distance": self.local_distance,
            "image": self.image_path, "metadata": self.metadata,
        }


@dataclass
class RetrievalResult:
    """The top-k hits for one scene, with what is needed to draw its attention maps."""

    hits: list[Hit]
    candidates: int  # how many candidates stage 2 re-ranked
    category: str | None  # the category filter, if any
    scene: Image.Image
    f_s: torch.Tensor  # d
    f_i: torch.Tensor  # R x d
    _category_table: torch.Tensor = field(repr=False)  # K x d unit category embeddings
    _category_to_index: dict = field(repr=False)

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __getitem__(self, i: int) -> Hit:
        return self.hits[i]

    @property
    def categories(self) -> list[str]:
        """The checkpoint's category vocabulary: the categories attention_map accepts."""
        return list(self._category_to_index)

    def attention_map(self, category: str) -> np.ndarray:
        """The scene's attention over its regions for `category`, as a side x side grid summing to 1."""
        if category not in self._category_to_index:
            raise RetrievalError(f"unknown category {category!r}; known: {', '.join(self.categories)}")
        e_c = self._category_table[self._category_to_index[category]].view(1, 1, -1)
        return attention_grid(attention_weights(self.f_i.unsqueeze(0), e_c.to(self.f_i.device))[0, 0])


@dataclass(frozen=True)
class Scene:
    """An encoded scene: the RGB image, f_s (1 x d), f_i (1 x R x d) and the presence probabilities of the
    checkpoint's categories (when it has a presence head); encode once, search many times."""

    image: Image.Image
    f_s: torch.Tensor
    f_i: torch.Tensor
    presence: torch.Tensor | None = None   # K: P(category in the scene), checkpoint vocabulary order; None: no head


@dataclass
class CategoryLook:
    """One category of a whole look: its top products and where its attention falls in the scene."""

    category: str
    hits: list[Hit]
    attention: np.ndarray                     # side x side grid summing to 1
    candidates: int                           # how many of this category's products stage 2 re-ranked
    present: bool | None = None               # judged already in the scene (None: no presence head)
    presence_probability: float | None = None

    def to_dict(self) -> dict:
        """The JSON form of ``ctl-retrieve --look --format json`` and of the service's /v1/look."""
        return {"category": self.category, "present": self.present,
                "presence_probability": self.presence_probability,
                "attention": [[round(float(v), 6) for v in row] for row in self.attention],
                "hits": [h.to_dict() for h in self.hits]}


@dataclass
class LookResult:
    """The whole look for one scene: one CategoryLook per category, in the order they are shown."""

    categories: list[CategoryLook]
    scene: Image.Image
    left_out: dict[str, float] = field(default_factory=dict)   # judged present and not shown: category -> p

    def __len__(self) -> int:
        return len(self.categories)

    def __iter__(self) -> Iterator[CategoryLook]:
        return iter(self.categories)

    def category(self, name: str) -> CategoryLook:
        for look in self.categories:
            if look.category == name:
                return look
        raise RetrievalError(f"category {name!r} is not in this look; it has "
                             f"{', '.join(c.category for c in self.categories)}")

    def to_dict(self, scene: str | None = None) -> dict:
        return {"scene": scene, "categories": [c.to_dict() for c in self.categories]}


@dataclass(frozen=True)
class Compatibility:
    """Does one product complete the scene: its distances, the calibrated probability and the decision."""

    product_id: str
    category: str
    image_path: str | None
    global_distance: float
    local_distance: float
    hybrid_distance: float
    probability: float | None      # None: no calibration for this checkpoint
    completes: bool | None         # probability >= threshold; None without a calibration

    @property
    def score(self) -> float:
        return 1.0 - self.hybrid_distance / 2.0

    def to_dict(self) -> dict:
        """The JSON form printed by ``ctl-retrieve --product ID --format json``."""
        return {"product_id": self.product_id, "category": self.category, "score": self.score,
                "hybrid_distance": self.hybrid_distance, "global_distance": self.global_distance,
                "local_distance": self.local_distance, "probability": self.probability,
                "completes_look": self.completes, "image": self.image_path}


@dataclass
class CompatibilityResult:
    """The verdicts on the products asked about, in the order asked."""

    products: list[Compatibility]
    threshold: float | None        # the calibrated probability at or above which a product completes the look
    scene: Image.Image

    def __len__(self) -> int:
        return len(self.products)

    def __iter__(self) -> Iterator[Compatibility]:
        return iter(self.products)

    def to_dict(self, scene: str | None = None) -> dict:
        return {"scene": scene, "threshold": self.threshold, "products": [p.to_dict() for p in self.products]}
