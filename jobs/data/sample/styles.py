"""Looks and items: a look's palette, patterns and texture per zone, and an item's own variation of its zone."""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, replace

import numpy as np

from jobs.data.sample.shapes import CATEGORIES, SHAPES

PATTERNS = ("solid", "stripes", "dots", "checks", "plaid", "zigzag", "waves", "noise")
TEXTURES = ("smooth", "grain", "knit", "twill")


HSV = tuple[float, float, float]
RGB = tuple[float, float, float]

_NEUTRALS: tuple[HSV, ...] = (
    (0.0, 0.0, 0.10), (0.0, 0.0, 0.95), (0.11, 0.22, 0.88), (0.0, 0.0, 0.55),
    (0.62, 0.55, 0.25), (0.08, 0.55, 0.62),
)
# Hue offsets of the four look colours per scheme; zone 0 leads with colours 0/1, zone 1 with 2.
_SCHEMES = (
    (0.0, 0.06, 0.13, -0.07),     # analogous
    (0.0, 0.03, 0.50, 0.47),      # complementary
    (0.0, 1 / 3, 2 / 3, 0.02),    # triadic
    (0.0, 0.42, 0.58, 0.50),      # split complementary
    (0.0, 0.0, 0.0, 0.0),         # monochrome (values differ)
)


@dataclass(frozen=True)
class ZoneStyle:
    colors: tuple[HSV, HSV, HSV]  # dominant, secondary, accent
    pattern: str
    freq: float                   # pattern cycles per sqrt(item area)
    angle: float                  # radians
    duty: float                   # share of a cycle covered by the secondary colour


@dataclass(frozen=True)
class Look:
    zones: tuple[ZoneStyle, ZoneStyle]
    texture: str


@dataclass(frozen=True)
class Item:
    """One product identity: rendered in its scene and again, differently, as a catalogue shot."""
    category: int
    aspect: float                       # width / height of the silhouette box
    shape: tuple[float, float, float, float]
    colors: tuple[RGB, RGB, RGB]        # pattern colours: dominant, secondary, accent
    part: RGB                           # colour of detail parts (sole, handle, lenses, watch face)
    pattern: str
    freq: float
    angle: float
    duty: float
    texture: str


def _clip01(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return float(min(max(x, lo), hi))


def sample_look(rng: np.random.Generator) -> Look:
    h0 = rng.random()
    scheme = int(rng.integers(len(_SCHEMES)))
    s0, v0 = rng.uniform(0.35, 0.95), rng.uniform(0.4, 0.95)
    cols: list[HSV] = []
    for i, off in enumerate(_SCHEMES[scheme]):
        if scheme == 4:  # monochrome: spread values and saturations instead of hues
            s, v = s0 * (1.0, 0.55, 0.8, 0.35)[i], v0 + (0.0, 0.25, -0.3, -0.15)[i]
        else:
            s, v = s0 + rng.normal(0, 0.12), v0 + rng.normal(0, 0.15)
        cols.append(((h0 + off + rng.normal(0, 0.01)) % 1.0, _clip01(s, 0.12), _clip01(v, 0.18)))
    if rng.random() < 0.35:
        cols[3] = _NEUTRALS[int(rng.integers(len(_NEUTRALS)))]
    if rng.random() < 0.15:
        cols[1] = _NEUTRALS[int(rng.integers(len(_NEUTRALS)))]
    pat0 = PATTERNS[int(rng.integers(len(PATTERNS)))]
    pat1 = pat0 if rng.random() < 0.5 else PATTERNS[int(rng.integers(len(PATTERNS)))]
    freq = math.exp(rng.uniform(math.log(2.5), math.log(7.5)))
    angle = float(rng.choice([0.0, math.pi / 4, math.pi / 2, -math.pi / 6, math.pi / 8]))
    duty = rng.uniform(0.3, 0.55)
    zones = []
    for z, (pat, lead) in enumerate(((pat0, (0, 1, 3)), (pat1, (2, 0 if rng.random() < 0.5 else 1, 3)))):
        zones.append(ZoneStyle(
            colors=tuple(cols[i] for i in lead),
            pattern=pat,
            freq=freq * rng.uniform(0.8, 1.25),
            angle=angle + (rng.normal(0, 0.3) if z else 0.0),
            duty=_clip01(duty + rng.normal(0, 0.05), 0.25, 0.6),
        ))
    return Look(zones=tuple(zones), texture=TEXTURES[int(rng.integers(len(TEXTURES)))])


def _hsv_rgb(c: HSV) -> RGB:
    return tuple(float(x) for x in colorsys.hsv_to_rgb(*c))


def make_item(rng: np.random.Generator, look: Look, zone: int, category: int) -> Item:
    z = look.zones[zone]
    cols = [((h + rng.normal(0, 0.02)) % 1.0, _clip01(s + rng.normal(0, 0.05)), _clip01(v + rng.normal(0, 0.05), 0.08))
            for h, s, v in z.colors]
    if rng.random() < 0.25:
        cols[0], cols[1] = cols[1], cols[0]
    name = CATEGORIES[category][0]
    if name == "Sunglasses":
        part = (cols[0][0], cols[0][1] * 0.6, 0.16)       # lenses: dark, tinted by the dominant colour
    elif name == "Watches":
        part = (cols[0][0], 0.06, 0.93)                    # a light face
    else:
        part = cols[2]
    return Item(
        category=category,
        aspect=SHAPES[name].aspect * math.exp(rng.normal(0, 0.08)),
        shape=tuple(float(x) for x in rng.random(4)),
        colors=tuple(_hsv_rgb(c) for c in cols),
        part=_hsv_rgb(part),
        pattern=z.pattern,
        freq=float(z.freq * rng.uniform(0.85, 1.15)),
        angle=float(z.angle + rng.normal(0, 0.12) + (math.pi / 2 if rng.random() < 0.2 else 0.0)),
        duty=z.duty,
        texture=look.texture,
    )


# "outfit" looks (`ctl sample-data --looks outfit`): a whole-look occasion beside the zones' local cues.
# Each occasion pulls every colour of the look toward its own saturation/value regime (weight 0.6), and a
# theme hue of the whole outfit becomes the accent of both zones; the scene shows both (render.py: a wash of
# the theme over the background, the occasion's light). Zone palettes and patterns are drawn as before.
OCCASIONS: dict[str, tuple[float, float, RGB]] = {   # name: saturation, value, light cast (r, g, b gains)
    "formal": (0.25, 0.28, (0.96, 0.98, 1.04)),
    "sport": (0.85, 0.85, (1.0, 1.0, 1.0)),
    "summer": (0.35, 0.92, (1.06, 1.01, 0.92)),
    "winter": (0.45, 0.55, (0.93, 0.98, 1.08)),
}
_CUE_PULL = 0.6


@dataclass(frozen=True)
class OutfitCue:
    """The whole-look attribute of an "outfit" look: its occasion and the theme colour shared by every item."""
    occasion: str
    theme: HSV


def sample_cue(rng: np.random.Generator) -> OutfitCue:
    occasion = tuple(OCCASIONS)[int(rng.integers(len(OCCASIONS)))]
    s, v, _ = OCCASIONS[occasion]
    theme = (float(rng.random()), _clip01(s + 0.25 + rng.normal(0, 0.05), 0.3), _clip01(v + rng.normal(0, 0.05), 0.2))
    return OutfitCue(occasion, theme)


def apply_cue(look: Look, cue: OutfitCue) -> Look:
    """The look with every colour pulled toward the occasion's regime and the theme as both zones' accent."""
    s_target, v_target, _ = OCCASIONS[cue.occasion]

    def pull(c: HSV) -> HSV:
        h, s, v = c
        return (h, _clip01(s + _CUE_PULL * (s_target - s)), _clip01(v + _CUE_PULL * (v_target - v)))

    zones = tuple(replace(z, colors=(pull(z.colors[0]), pull(z.colors[1]), cue.theme)) for z in look.zones)
    return replace(look, zones=zones)
