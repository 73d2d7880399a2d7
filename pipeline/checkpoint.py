"""Checkpoint format: heads, category vocabulary, backbone id and config, identified by the file's sha256."""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import ArtifactError
from common.files import atomic_path, sha256_of, write_json_atomic
from pipeline.embedder import PresenceHead, StyleEmbedder, build_embedder

FORMAT = "complete-the-look/checkpoint-v1"
CONFIG_FILE = "config.json"   # the run's config, written beside the checkpoint as JSON
# What a model trained on the generated sample can and cannot do, in words a command or the page can show.
SAMPLE_MODEL_NOTE = ("this model learnt from the generated sample looks only (rendered shapes and patterns): "
                     "on a real photo its presence and recommendations mean little. Train on real looks for that: "
                     "`ctl data stl` + `ctl data fetch` (Shop the Look), or your own catalogue (`ctl data catalog`)")


class CheckpointError(ArtifactError):
    """A checkpoint that is missing, unreadable or does not match what it is used with."""


MISSING_HINT = "train one first with {step:train}"
WRONG_FILE_HINT = "pass the checkpoint.pt that {step:train} wrote"


@dataclass
class Checkpoint:
    embedder: StyleEmbedder
    sha256: str
    path: Path
    config: dict
    extra: dict
    notes: tuple[str, ...] = ()   # what this (older) checkpoint lacks, in words a command can print

    @property
    def has_presence(self) -> bool:
        """Whether the checkpoint carries a category-presence head."""
        return self.embedder.presence is not None

    @property
    def hybrid_form(self) -> str:
        """"fitted" (per-category local weights from validation) or "paper" (d_h = (d_g + d_l) / 2)."""
        return str(self.extra.get("hybrid", {}).get("form", "paper"))

    @property
    def training_data(self) -> str:
        """What the model learnt from: "sample" (the generated looks), "real" (scenes of real photos), or
        "unknown" (a checkpoint older than this field). The page and the README warn on "sample"."""
        return str(self.extra.get("training_data", {}).get("kind", "unknown"))


def save_checkpoint(
    path: str | os.PathLike, embedder: StyleEmbedder, *, config: dict, extra: dict | None = None
) -> str:
    """Write the checkpoint atomically (and config.json beside it); return its sha256."""
    payload = {
        "format": FORMAT,
        "backbone": embedder.backbone_name,
        "backbone_weights": getattr(embedder.backbone, "weights", config.get("backbone_weights", "imagenet")),
        "backbone_trained": not embedder.freeze_backbone,
        "dim": embedder.dim,
        "hidden": embedder.hidden,
        "categories": embedder.categories,
        "heads": embedder.heads_state_dict(),
        "config": json.loads(json.dumps(config)),
        "extra": json.loads(json.dumps(extra or {})),
    }
    # Random weights cannot be rebuilt from their name, so they travel in the file like fine-tuned ones.
    if embedder.backbone is not None and (not embedder.freeze_backbone or payload["backbone_weights"] == "random"):
        payload["backbone_state"] = embedder.backbone.state_dict()
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # a file object, not the path: torch names the zip's root folder after a path's file name, and the
        # temp name is random, so the same payload saved twice got two sha256s
        torch.save(payload, f)
    write_json_atomic(path.with_name(CONFIG_FILE), payload["config"])
    return sha256_of(path)


def _read_payload(source, path: Path, *, mmap: bool = False) -> dict:
    """torch.load a checkpoint (a path, or bytes in a BytesIO) and check its format; CheckpointError otherwise."""
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__})",
                              hint=WRONG_FILE_HINT) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint", hint=WRONG_FILE_HINT)
    return payload


def check_checkpoint(path: str | os.PathLike) -> str:
    """Check that `path` is a readable checkpoint without building its model; return its sha256.

    Cheap (the tensors are memory-mapped, not read), so a caller can refuse a wrong file or a mismatched
    index before paying for the backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}", hint=MISSING_HINT)
    _read_payload(path, path, mmap=True)
    return sha256_of(path)


def has_presence_head(path: str | os.PathLike) -> bool:
    """Whether a checkpoint carries a category-presence head, without building its model (cheap)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}", hint=MISSING_HINT)
    return any(k.startswith("presence.") for k in _read_payload(path, path, mmap=True)["heads"])


def load_checkpoint(
    path: str | os.PathLike, *, with_backbone: bool = True, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a checkpoint; the backbone comes from its recorded weights (or the saved fine-tuned state)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}", hint=MISSING_HINT)
    raw = path.read_bytes()
    payload = _read_payload(io.BytesIO(raw), path)
    stored_backbone = "backbone_state" in payload
    embedder = build_embedder(
        categories=payload["categories"],
        backbone=payload["backbone"],
        # A stored backbone's weights are in the checkpoint; start from random to skip a pointless load.
        backbone_weights="random" if stored_backbone else payload["backbone_weights"],
        with_backbone=with_backbone,
        dim=payload["dim"],
        hidden=payload["hidden"],
        freeze_backbone=not payload["backbone_trained"],
    )
    notes = []
    if any(k.startswith("presence.") for k in payload["heads"]):
        regions = bool(payload["heads"].get("presence.regions", torch.tensor(0.0)).item())
        embedder.attach_presence(PresenceHead(embedder.channels, len(embedder.categories), regions=regions))
    else:
        notes.append(f"{path} has no category-presence head (trained before it existed): every category "
                     "counts as missing from the scene; retrain with `ctl train` to add it")
    missing, unexpected = embedder.load_state_dict(payload["heads"], strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if "presence.threshold" in missing:    # a presence head older than per-category thresholds: 0.5 for all
        missing.remove("presence.threshold")
    if "presence.regions" in missing:      # older than region pooling: the classifier on the average map
        missing.remove("presence.regions")
    if "attention_log_sharpness" in missing:   # older than a learnt attention sharpness: the paper's attention
        missing.remove("attention_log_sharpness")
    if "hybrid_local_weight" in missing:   # older than fitted hybrid weights: the paper's form, w = 1/2
        missing.remove("hybrid_local_weight")
        notes.append(f"{path} has no fitted hybrid weights (trained before them): its hybrid distance is the "
                     "paper's (d_g + d_l) / 2")
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: head weights do not match the model (missing {missing}, unexpected {unexpected})"
        )
    if with_backbone and stored_backbone:
        embedder.backbone.load_state_dict(payload["backbone_state"])
    embedder.to(device).eval()
    return Checkpoint(embedder, hashlib.sha256(raw).hexdigest(), path, payload["config"], payload.get("extra", {}),
                      tuple(notes))
