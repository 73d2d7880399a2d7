"""Rendering a planned scene (background, items, lighting, noise) and a catalogue shot of one item."""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from jobs.data.sample.effects import add_noise, drop_shadow, point_table
from jobs.data.sample.items import item_image
from jobs.data.sample.plans import PRODUCT_STREAM, SCENE_STREAM, ProductPlan, ScenePlan, stream_rng
from jobs.data.sample.styles import OCCASIONS, RGB


def _tight_box(alpha: np.ndarray, left: int, top: int, size: int) -> list[int]:
    """Pixel box [x0, y0, x1, y1) of alpha > 50% placed at (left, top), clipped to the canvas.

    A tiny item whose alpha never reaches 50% (thin shapes at 32 px) uses half its peak instead.
    """
    on = alpha > min(127, int(alpha.max()) // 2)
    xs, ys = np.nonzero(on.any(axis=0))[0] + left, np.nonzero(on.any(axis=1))[0] + top
    xs, ys = xs[(xs >= 0) & (xs < size)], ys[(ys >= 0) & (ys < size)]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _rgb8(c: RGB) -> tuple[int, int, int]:
    return tuple(int(round(255 * x)) for x in c)


def _random_hsv8(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> tuple[int, int, int]:
    return _rgb8(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v)))


_THEME_WASH = 0.5   # share of the theme colour in an "outfit" scene's background


def _scene_background(rng: np.random.Generator, plan: ScenePlan, out_size: int) -> Image.Image:
    """Wall, floor, clutter and (outfit layouts) a mannequin, drawn small and upscaled: out of focus."""
    size = max(16, round(out_size * rng.uniform(0.45, 0.75)))
    img = Image.new("RGB", (size, size), _random_hsv8(rng, (0.03, 0.35), (0.45, 0.95)))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.6:  # a floor
        d.rectangle([0, rng.uniform(0.55, 0.85) * size, size, size], fill=_random_hsv8(rng, (0.0, 0.3), (0.25, 0.8)))
    for _ in range(int(rng.integers(5, 12))):  # clutter in colours unrelated to the look
        colour = _random_hsv8(rng, (0.0, 0.6), (0.15, 0.95))
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        bw, bh = rng.uniform(0.05, 0.45, 2) * size
        kind = int(rng.integers(4))
        if kind == 0:
            d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=colour)
        elif kind == 1:
            d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=colour)
        elif kind == 2:
            width = max(1, int(rng.uniform(0.005, 0.03) * size))
            d.line([x0, y0, x0 + bw, y0 + bh * rng.choice([-1, 1])], fill=colour, width=width)
        else:
            pts = [(x0 + bw * rng.random(), y0 + bh * rng.random()) for _ in range(int(rng.integers(3, 6)))]
            d.polygon(pts, fill=colour)
    if plan.layout == "outfit":  # a faint mannequin behind the items
        fx0, fy0, fx1, fy1 = (v * size for v in plan.frame)
        fw, fh, cx = fx1 - fx0, fy1 - fy0, (fx0 + fx1) / 2
        skin = _rgb8(colorsys.hsv_to_rgb(rng.uniform(0.03, 0.1), rng.uniform(0.1, 0.4), rng.uniform(0.4, 0.9)))
        d.ellipse([cx - 0.07 * fw, fy0, cx + 0.07 * fw, fy0 + 0.13 * fh], fill=skin)
        d.rectangle([cx - 0.03 * fw, fy0 + 0.12 * fh, cx + 0.03 * fw, fy0 + 0.18 * fh], fill=skin)
        d.polygon([(cx - 0.18 * fw, fy0 + 0.18 * fh), (cx + 0.18 * fw, fy0 + 0.18 * fh),
                   (cx + 0.14 * fw, fy0 + 0.55 * fh), (cx - 0.14 * fw, fy0 + 0.55 * fh)], fill=skin)
        for sgn in (-1, 1):
            d.line([(cx + sgn * 0.17 * fw, fy0 + 0.2 * fh), (cx + sgn * 0.26 * fw, fy0 + 0.52 * fh)],
                   fill=skin, width=max(1, int(0.05 * fw)))
            d.line([(cx + sgn * 0.07 * fw, fy0 + 0.54 * fh), (cx + sgn * 0.09 * fw, fy1)],
                   fill=skin, width=max(1, int(0.08 * fw)))
    if plan.cue is not None:  # "outfit" looks: the whole scene takes the outfit's theme colour and occasion's light
        img = Image.blend(img, Image.new("RGB", img.size, _rgb8(colorsys.hsv_to_rgb(*plan.cue.theme))), _THEME_WASH)
    return img.filter(ImageFilter.BoxBlur(1.0)).resize((out_size, out_size), Image.BICUBIC)


def render_scene(plan: ScenePlan, *, seed: int, size: int, return_masks: bool = False):
    """Render a scene: (uint8 image (size, size, 3), tight bboxes [l, t, r, b] normalised, item masks or None).

    A mask is the item's full alpha on the scene canvas (before later items occlude it), uint8.
    """
    # three streams: background, items, lighting + noise (so a scene without its items keeps the rest)
    canvas = _scene_background(stream_rng(seed, SCENE_STREAM, plan.index, 0), plan, size)
    rng = stream_rng(seed, SCENE_STREAM, plan.index, 1)
    bboxes, masks = [], []
    for placed in plan.items:
        x_min, y_min, x_max, y_max = placed.box
        img = item_image(placed.item, round((x_max - x_min) * size), round((y_max - y_min) * size), rng,
                         rng.normal(0, 4))
        left = round((x_min + x_max) / 2 * size - img.width / 2)
        top = round((y_min + y_max) / 2 * size - img.height / 2)
        alpha = img.getchannel("A")
        a = np.asarray(alpha)
        drop_shadow(canvas, a, left + round(0.01 * size), top + round(0.015 * size), 0.012 * size + 0.5, 0.35)
        canvas.paste(img, (left, top), img)
        x0, y0, x1, y1 = _tight_box(a, left, top, size)
        bboxes.append([x0 / size, y0 / size, x1 / size, y1 / size])
        if return_masks:
            full = Image.new("L", (size, size), 0)
            full.paste(alpha, (left, top))
            masks.append(np.asarray(full))
    # lighting: a gradient across the picture, contrast, brightness, colour cast; then sensor noise
    rng = stream_rng(seed, SCENE_STREAM, plan.index, 2)
    ang, depth = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.35)
    xs = np.arange(size, dtype=np.float32) / size - 0.5
    ramp = (math.cos(ang) * xs[None, :] + math.sin(ang) * xs[:, None]) * (depth / 1.42) + (1 - depth / 2)
    canvas = ImageChops.multiply(canvas, Image.fromarray((ramp * 255 + 0.5).astype(np.uint8)).convert("RGB"))
    contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.12) / (1 - depth / 4)
    cast = (1 + rng.normal(0, 0.03, 3)) * brightness
    if plan.cue is not None:
        cast = cast * np.asarray(OCCASIONS[plan.cue.occasion][2])
    canvas = canvas.point(point_table(contrast * cast, (1 - contrast) * 127.5 * cast))
    img = add_noise(canvas, rng, int(rng.integers(2, 6)))
    return img, bboxes, (masks if return_masks else None)


def render_product(plan: ProductPlan, *, seed: int, size: int) -> np.ndarray:
    """Render a catalogue shot of the item: light plain background, centred, its own pose and scale."""
    rng = stream_rng(seed, PRODUCT_STREAM, *plan.key)
    item = plan.item
    tint = np.asarray(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.06), rng.uniform(0.9, 0.99)), np.float32)
    column = (tint * (1.0 - 0.05 * np.arange(size, dtype=np.float32) / size)[:, None] * 255 + 0.5).astype(np.uint8)
    canvas = Image.fromarray(column[:, None, :], "RGB").resize((size, size), Image.NEAREST)
    long_side = rng.uniform(0.58, 0.8) * size
    w, h = (long_side, long_side / item.aspect) if item.aspect >= 1 else (long_side * item.aspect, long_side)
    img = item_image(item, round(w), round(h), rng, rng.uniform(-12, 12), flip=bool(rng.random() < 0.5))
    left = round(size / 2 - img.width / 2 + rng.normal(0, 0.02) * size)
    top = round(size / 2 - img.height / 2 + rng.normal(0, 0.02) * size)
    drop_shadow(canvas, np.asarray(img.getchannel("A")), left, top + round(0.025 * size), 0.02 * size + 0.5, 0.18)
    canvas.paste(img, (left, top), img)
    canvas = canvas.point(point_table(rng.uniform(0.97, 1.04)))
    return add_noise(canvas, rng, 2)
