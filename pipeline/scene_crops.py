"""Scene views that leave the product out, so the model learns compatibility rather than duplicate detection."""
from __future__ import annotations

from PIL import Image

from common import defaults

EXCLUSION_MODES = ("crop", "mask")


def grow_box(bbox, margin: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised [left, top, right, bottom] grown by `margin` x the image's longer side, clamped to [0, 1]."""
    left, top, right, bottom = bbox
    dx, dy = margin * max(width, height) / width, margin * max(width, height) / height
    return (max(0.0, left - dx), max(0.0, top - dy), min(1.0, right + dx), min(1.0, bottom + dy))


def bbox_to_pixels(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """Normalised [left, top, right, bottom] -> integer pixel box clamped to the image."""
    left, top, right, bottom = bbox
    x0 = min(max(int(round(left * width)), 0), width)
    y0 = min(max(int(round(top * height)), 0), height)
    x1 = min(max(int(round(right * width)), x0), width)
    y1 = min(max(int(round(bottom * height)), y0), height)
    return x0, y0, x1, y1


def largest_region_outside(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """The largest of the four full-width/full-height bands beside the box (left, right, above, below)."""
    x0, y0, x1, y1 = bbox_to_pixels(bbox, width, height)
    bands = [(0, 0, x0, height), (x1, 0, width, height), (0, 0, width, y0), (0, y1, width, height)]
    return max(bands, key=lambda box: (box[2] - box[0]) * (box[3] - box[1]))


def exclude_product(scene: Image.Image, bbox, mode: str = defaults.EXCLUSION, min_side: int = 16,
                    margin: float = defaults.EXCLUSION_MARGIN) -> Image.Image:
    """The scene without the product: cropped to the largest band outside its (grown) box, or that box masked grey.

    Falls back to masking when the largest band is thinner than `min_side` pixels (a box that fills the scene).
    """
    if mode not in EXCLUSION_MODES:
        raise ValueError(f"unknown exclusion mode {mode!r}; known: {', '.join(EXCLUSION_MODES)}")
    width, height = scene.size
    bbox = grow_box(bbox, margin, width, height)
    if mode == "crop":
        region = largest_region_outside(bbox, width, height)
        if min(region[2] - region[0], region[3] - region[1]) >= min_side:
            return scene.crop(region)
    masked = scene.copy()
    x0, y0, x1, y1 = bbox_to_pixels(bbox, width, height)
    masked.paste((124, 116, 104), (x0, y0, x1, y1))  # ImageNet mean colour: as neutral as a patch can be
    return masked
