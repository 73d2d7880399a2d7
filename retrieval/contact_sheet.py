"""The retrieval contact sheet: the scene under one category's attention map beside the top-k products."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageOps

from common.files import atomic_path
from common.naming import short_category
from pipeline.images import ImageError, load_image

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

THUMB = 160  # product thumbnail side, pixels at DPI
DPI = 100
MAX_COLUMNS = 5
CMAP = "turbo"


def attention_overlay(scene: Image.Image, attention: np.ndarray, *, alpha: float = 0.45) -> Image.Image:
    """The scene blended with a heatmap of a side x side attention map, upsampled smoothly (red = high)."""
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim != 2:
        raise ValueError(f"attention must be a 2-D grid, got shape {attention.shape}")
    lo, hi = float(attention.min()), float(attention.max())
    norm = np.zeros_like(attention) if hi <= lo else (attention - lo) / (hi - lo)
    grid = Image.fromarray((norm * 255).round().astype(np.uint8), mode="L").resize(scene.size, Image.BICUBIC)
    heat = np.asarray(grid, dtype=np.float64) / 255.0
    colours = matplotlib.colormaps[CMAP](heat)[..., :3]
    base = np.asarray(scene.convert("RGB"), dtype=np.float64) / 255.0
    mixed = (1.0 - alpha) * base + alpha * colours
    return Image.fromarray((mixed * 255).round().astype(np.uint8), mode="RGB")


def _thumbnail(path: str | None, side: int) -> Image.Image | None:
    """The product image scaled (up or down) to fit a white side x side square; None if unreadable."""
    if not path:
        return None
    try:
        img = load_image(path)
    except ImageError:
        return None
    img = ImageOps.contain(img, (side, side), Image.LANCZOS)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def _draw_thumbnail(ax, image_path: str | None, *, first: bool) -> None:
    """A product's thumbnail in its axes (a grey "no image" box when unreadable), the first one outlined."""
    thumb = _thumbnail(image_path, THUMB)
    if thumb is None:
        ax.set_facecolor("#f0f0f0")
        ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, color="#888888", transform=ax.transAxes)
    else:
        ax.imshow(thumb, aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("#e8590c" if first else "#d0d0d0")
        spine.set_linewidth(2.5 if first else 1.0)


def _product_id(fig, hit, x: float, y: float) -> None:
    fig.text(x, y, _clip(str(hit.product_id), 12), fontsize=7.5, color="#888888", va="top", ha="right",
             family="monospace")


def _save(fig, out_png: str | os.PathLike) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    return out_png


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def render_sheet(
    out_png: str | os.PathLike,
    scene: Image.Image,
    attention: np.ndarray,
    attention_category: str,
    hits: Sequence,
    *,
    title: str | None = None,
) -> Path:
    """Write one PNG: the scene under `attention_category`'s attention map on the left, the hits on the right.

    `hits` are objects with rank, product_id, category, score and image_path (retriever.Hit).
    """
    # Layout in pixels, turned into figure fractions below.
    n = len(hits)
    cols = max(1, min(MAX_COLUMNS, n))
    rows = max(1, math.ceil(n / cols))
    pad, gap, label_h, header_h = 24, 14, 40, 72
    cell_w, cell_h = THUMB + gap, THUMB + label_h + gap
    grid_w, grid_h = cols * cell_w - gap, rows * cell_h - gap
    scene_h = max(grid_h, 2 * THUMB + label_h + gap)
    scene_w = int(round(scene_h * scene.width / max(1, scene.height)))
    scene_w = min(max(scene_w, int(scene_h * 0.6)), int(scene_h * 1.6))
    caption_h = 26
    width = pad + scene_w + 2 * pad + grid_w + pad
    height = header_h + caption_h + max(scene_h + 36, grid_h) + pad
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")

    def axes(left, top, w, h):
        return fig.add_axes((left / width, 1 - (top + h) / height, w / width, h / height))

    fig.text(pad / width, 1 - 22 / height, title or "Complete the look", fontsize=15, fontweight="bold",
             color="#1a1a1a", va="top")
    fig.text(pad / width, 1 - 46 / height,
             f"{n} products that complete the scene, best first (score = 1 - hybrid distance / 2)",
             fontsize=9.5, color="#666666", va="top")

    top = header_h + caption_h
    ax = axes(pad, top, scene_w, scene_h)
    ax.imshow(attention_overlay(scene, attention), aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("#cccccc")
    bar_w = min(scene_w, 200)
    bar = axes(pad, top + scene_h + 8, bar_w, 9)
    bar.imshow(np.linspace(0, 1, 256)[None, :], aspect="auto", cmap=CMAP, alpha=0.8)
    bar.axis("off")
    for x_px, label, ha in ((pad, "low", "left"), (pad + bar_w, "high attention", "right")):
        fig.text(x_px / width, 1 - (top + scene_h + 20) / height, label, fontsize=7.5, color="#555555",
                 ha=ha, va="top")
    fig.text(pad / width, 1 - (top - 8) / height,
             f"attention of \u201c{_clip(short_category(attention_category), 28)}\u201d (top result's category)",
             fontsize=9.5, color="#333333", va="bottom")

    left0 = pad + scene_w + 2 * pad
    for i, hit in enumerate(hits):
        r, c = divmod(i, cols)
        x, y = left0 + c * cell_w, top + r * cell_h
        first = i == 0
        _draw_thumbnail(axes(x, y + label_h, THUMB, THUMB), hit.image_path, first=first)
        label = _clip(short_category(hit.category), 17 - len(str(hit.rank)))
        fig.text(x / width, 1 - (y + 2) / height, f"#{hit.rank}  {label}", fontsize=9, fontweight="bold",
                 color="#e8590c" if first else "#222222", va="top")
        fig.text(x / width, 1 - (y + 19) / height, f"score {hit.score:.3f}", fontsize=8, color="#333333", va="top")
        _product_id(fig, hit, (x + THUMB) / width, 1 - (y + 19) / height)
    return _save(fig, out_png)


def render_look_sheet(out_png: str | os.PathLike, scene: Image.Image, looks: Sequence, *,
                      title: str | None = None, left_out: dict | None = None) -> Path:
    """Write one PNG of a whole look: one row per category, the scene under that category's attention map
    on the left, its products on the right.

    `looks` are objects with category, attention (a side x side grid), hits and presence_probability
    (retrieval.results.CategoryLook); `left_out` names the categories judged present and not drawn.
    """
    k = max([len(cl.hits) for cl in looks] + [1])
    pad, gap, label_h, header_h, row_gap = 24, 14, 40, 80, 22
    cell_w = THUMB + gap
    row_h = THUMB + label_h
    scene_w = int(round(THUMB * min(max(scene.width / max(1, scene.height), 0.6), 1.6)))
    width = pad + scene_w + 2 * pad + k * cell_w - gap + pad
    rows = max(1, len(looks))
    height = header_h + rows * (row_h + row_gap) + pad
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")

    def axes(left, top, w, h):
        return fig.add_axes((left / width, 1 - (top + h) / height, w / width, h / height))

    fig.text(pad / width, 1 - 20 / height, title or "Complete the look", fontsize=15, fontweight="bold",
             color="#1a1a1a", va="top")
    fig.text(pad / width, 1 - 42 / height, f"{len(looks)} categories, best {k} each (score = 1 - hybrid distance / 2);"
             " left: where the category's attention falls in the scene", fontsize=9, color="#666666", va="top")
    if left_out:
        fig.text(pad / width, 1 - 58 / height, _clip("already in the scene, left out: " + ", ".join(
            f"{_clip(short_category(c), 18)} (p={p:.2f})" for c, p in left_out.items()), 150),
            fontsize=9, color="#666666", va="top")
    if not looks:
        fig.text(pad / width, 1 - (header_h + 20) / height, "(no category to show)", fontsize=10, va="top")
    for r, cl in enumerate(looks):
        top = header_h + r * (row_h + row_gap)
        ax = axes(pad, top + label_h, scene_w, THUMB)
        ax.imshow(attention_overlay(scene, cl.attention), aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        name = _clip(short_category(cl.category), 26)
        presence = "" if cl.presence_probability is None else f"  p(in scene) {cl.presence_probability:.2f}"
        fig.text(pad / width, 1 - (top + 2) / height, name, fontsize=10, fontweight="bold", color="#1a1a1a",
                 va="top")
        fig.text(pad / width, 1 - (top + 19) / height, f"attention{presence}", fontsize=8, color="#555555", va="top")
        left0 = pad + scene_w + 2 * pad
        for i, hit in enumerate(cl.hits):
            x = left0 + i * cell_w
            _draw_thumbnail(axes(x, top + label_h, THUMB, THUMB), hit.image_path, first=i == 0)
            fig.text(x / width, 1 - (top + 19) / height, f"#{hit.rank}  score {hit.score:.3f}", fontsize=8,
                     color="#e8590c" if i == 0 else "#333333", va="top")
            _product_id(fig, hit, (x + THUMB) / width, 1 - (top + 4) / height)
    return _save(fig, out_png)
