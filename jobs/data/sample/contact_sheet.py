"""The sample's contact sheet: a few scenes with their pair boxes, each beside its products' catalogue shots."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from common.errors import ArtifactError
from common.files import atomic_path
from jobs.data.layouts import SAMPLE_CATEGORIES, SAMPLE_PAIRS, sample_product_image, sample_scene_image
from jobs.data.sample.shapes import CATEGORIES

_BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def render_contact_sheet(sample_dir: str | os.PathLike, out_png: str | os.PathLike, n: int = 4,
                         *, scene_px: int = 256, thumb: int = 112, per_row: int = 3) -> Path:
    """Draw n scenes with their boxes, each next to its products' catalogue shots, into a PNG."""
    sample_dir = Path(sample_dir)
    cats = json.loads((sample_dir / SAMPLE_CATEGORIES).read_text())
    by_scene: dict[str, list[dict]] = {}
    for line in (sample_dir / SAMPLE_PAIRS).read_text().splitlines():
        if line.strip():
            pair = json.loads(line)
            by_scene.setdefault(pair["scene"], []).append(pair)
    chosen = list(by_scene)[:n]
    if not chosen:
        raise ArtifactError(f"no pairs in {sample_dir / SAMPLE_PAIRS}")
    pad, label_h, header = 8, 13, 22
    cell_w, cell_h = thumb + pad, thumb + label_h + pad
    grid_rows = max(math.ceil(len(by_scene[s]) / per_row) for s in chosen)
    width = scene_px + 4 * pad + per_row * cell_w
    row_h = max(scene_px, grid_rows * cell_h) + 2 * pad
    sheet = Image.new("RGB", (width, header + len(chosen) * row_h), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((pad, 6), "scene + pairs.jsonl boxes", fill=(40, 40, 40), font=font)
    draw.text((scene_px + 3 * pad, 6), "its products (catalogue shots)", fill=(40, 40, 40), font=font)
    short = {path: name for name, path in CATEGORIES}
    for r, sid in enumerate(chosen):
        y = header + r * row_h
        scene = Image.open(sample_dir / sample_scene_image(sid)).convert("RGB").resize((scene_px, scene_px))
        sd = ImageDraw.Draw(scene)
        for k, pair in enumerate(by_scene[sid]):
            colour = _BOX_COLOURS[k % len(_BOX_COLOURS)]
            left, top, right, bottom = (v * scene_px for v in pair["bbox"])
            sd.rectangle([left, top, right - 1, bottom - 1], outline=colour, width=2)
            sd.text((left + 3, top + 1), str(k + 1), fill=colour, font=font)
        sheet.paste(scene, (pad, y))
        for k, pair in enumerate(by_scene[sid]):
            colour = _BOX_COLOURS[k % len(_BOX_COLOURS)]
            x = pad + scene_px + 3 * pad + (k % per_row) * cell_w
            ty = y + 2 + (k // per_row) * cell_h
            prod = Image.open(sample_dir / sample_product_image(pair["product"])).convert("RGB").resize((thumb, thumb))
            sheet.paste(prod, (x, ty))
            draw.rectangle([x - 2, ty - 2, x + thumb + 1, ty + thumb + 1], outline=colour, width=2)
            name = short.get(cats.get(pair["product"], ""), "?")
            draw.text((x, ty + thumb + 2), f"{k + 1} {name}", fill=(40, 40, 40), font=font)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:   # 256 colours keep the PNG small; the looks survive it
        sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            tmp, format="PNG", optimize=True)
    return out_png
