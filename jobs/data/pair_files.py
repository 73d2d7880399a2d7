"""Pair and category files (STL json lines or array, the sample's pairs.jsonl): parsed line by line, rejects kept.

Boxes are normalised to [0, 1] with the origin top left, ``left < right`` and ``top < bottom``.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from common.errors import InputError

# Tolerated float noise at the edges of a normalised box; values within it are clamped to [0, 1].
BOX_EPS = 1e-6
ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]*")
_NUMBER = (int, float)


class PairFileError(InputError):
    """A pair or category file that cannot be read as one (not text, not JSON, no valid pair)."""


class PairRecord(NamedTuple):
    line: int
    scene_id: str
    product_id: str
    category: str
    bbox: tuple[float, float, float, float]


class Reject(NamedTuple):
    line: int
    reason: str   # malformed | bbox_out_of_range | bbox_inverted | uncategorised | duplicate
    detail: str
    text: str

    def as_dict(self) -> dict:
        return self._asdict()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: bulk parsing allocates many objects and no cycles, and the
    collector would otherwise rescan the growing heap again and again (a third of the ingest time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_text_file(path: Path) -> str:
    """The file's text (UTF-8, a BOM allowed); PairFileError naming the file, line and column when it is not text."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        data = path.read_bytes()   # the text reader decodes in chunks: find the bad byte in the whole file
        at = _first_bad_byte(data)
        line = data.count(b"\n", 0, at) + 1
        column = at - (data.rfind(b"\n", 0, at) + 1) + 1
        raise PairFileError(f"{path}: line {line}, column {column}: not UTF-8 text (byte 0x{data[at]:02x}); "
                            "expected a JSON text file") from None
    except OSError as exc:
        raise PairFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _first_bad_byte(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return 0


def _iter_json_items(path: Path) -> Iterator[tuple[int, str, object]]:
    """Yield (line number, raw text, parsed object or ValueError) for a JSON-lines file or array."""
    text = read_text_file(path)
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":
        try:
            yield from _iter_json_array(text, start)
        except ValueError as exc:
            raise PairFileError(f"{path}: {exc}") from None
        return
    # raw_decode skips json.loads' argument handling and whitespace regexes (a third of the time)
    raw_decode = json.JSONDecoder().raw_decode
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw or raw.isspace():
            continue
        try:
            line = raw.strip() if raw[0].isspace() or raw[-1].isspace() else raw
            obj, end = raw_decode(line)
            if end != len(line):
                raise json.JSONDecodeError("extra data after the JSON value", line, end)
            yield number, raw, obj
        except ValueError as exc:
            yield number, raw, ValueError(f"invalid JSON: {getattr(exc, 'msg', exc)}")


def _iter_json_array(text: str, pos: int) -> Iterator[tuple[int, str, object]]:
    """Walk a JSON array element by element so each element keeps its line number."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    line, line_pos = 1, 0
    pos = ws.match(text, pos + 1).end()
    if text[pos:pos + 1] == "]":
        return
    while True:
        line += text.count("\n", line_pos, pos)
        line_pos = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError as exc:
            raise ValueError(f"{_line_of(text, exc.pos)}: invalid JSON array element: {exc.msg}") from None
        yield line, text[pos:end], obj
        pos = ws.match(text, end).end()
        if text[pos:pos + 1] == "]":
            return
        if text[pos:pos + 1] != ",":
            raise ValueError(f"{_line_of(text, pos)}: expected ',' or ']' in the JSON array")
        pos = ws.match(text, pos + 1).end()


def _line_of(text: str, pos: int) -> str:
    return f"line {text.count(chr(10), 0, pos) + 1}"


def _check_box(box) -> tuple[str, str] | tuple[float, float, float, float]:
    """The clamped box, or (reason, detail) when it is malformed, out of range or inverted."""
    if type(box) is not list and type(box) is not tuple or len(box) != 4:
        return "malformed", f"bbox must be a list of 4 numbers, got {json.dumps(box)[:60]}"
    left, top, right, bottom = box
    # type() rather than isinstance: bool is an int subclass and is not a coordinate.
    if (type(left) not in _NUMBER or type(top) not in _NUMBER or type(right) not in _NUMBER
            or type(bottom) not in _NUMBER or not math.isfinite(left + top + right + bottom)):
        return "malformed", f"bbox must hold 4 finite numbers, got {json.dumps(box)[:60]}"
    lo, hi = -BOX_EPS, 1 + BOX_EPS
    if not (lo <= left <= hi and lo <= top <= hi and lo <= right <= hi and lo <= bottom <= hi):
        return "bbox_out_of_range", f"bbox {list(box)} is outside [0, 1]"
    if not (0.0 <= left <= 1.0 and 0.0 <= top <= 1.0 and 0.0 <= right <= 1.0 and 0.0 <= bottom <= 1.0):
        left, top = min(1.0, max(0.0, left)), min(1.0, max(0.0, top))
        right, bottom = min(1.0, max(0.0, right)), min(1.0, max(0.0, bottom))
    left, top, right, bottom = float(left), float(top), float(right), float(bottom)
    if not (left < right and top < bottom):
        return "bbox_inverted", f"bbox {list(box)} is empty or inverted (needs left < right, top < bottom)"
    return left, top, right, bottom


def parse_pairs(
    path: str | os.PathLike,
    categories: Mapping[str, str],
    *,
    id_re: re.Pattern = ID_RE,
) -> tuple[list[PairRecord], list[Reject]]:
    """Read a pair file; return the valid pairs and the rejected lines (with line numbers).

    Lines are left out when they are not JSON objects with string ``scene``/``product`` ids and a
    4-number ``bbox``, when the box is out of [0, 1] or inverted, when the product has no category,
    or when the same (scene, product) pair appeared on an earlier line.
    A JSON array is also accepted; its elements are numbered by the line they start on.
    PairFileError when the file is not text or a JSON array breaks off.
    """
    with no_gc():
        return _parse_pairs(Path(path), categories, id_re)


def _parse_pairs(path: Path, categories: Mapping[str, str], id_re: re.Pattern) -> tuple[list[PairRecord], list[Reject]]:
    records: list[PairRecord] = []
    rejects: list[Reject] = []
    seen: dict[tuple[str, str], int] = {}
    valid_id = id_re.fullmatch
    for line, raw, obj in _iter_json_items(path):
        reason = None
        if isinstance(obj, ValueError):
            reason, detail = "malformed", str(obj)
        elif type(obj) is not dict:
            reason, detail = "malformed", f"expected a JSON object, got {type(obj).__name__}"
        elif "scene" not in obj or "product" not in obj or "bbox" not in obj:
            missing = [k for k in ("scene", "product", "bbox") if k not in obj]
            reason, detail = "malformed", f"missing key(s) {', '.join(missing)}"
        else:
            scene, product = obj["scene"], obj["product"]
            for name, value in (("scene", scene), ("product", product)):
                if type(value) is not str or not valid_id(value):
                    reason, detail = "malformed", f"{name} id {json.dumps(value)[:60]} is not a valid signature"
                    break
            else:
                box = _check_box(obj["bbox"])
                if type(box[0]) is str:
                    reason, detail = box
                elif not categories.get(product):
                    reason, detail = "uncategorised", f"product {product} has no category"
                else:
                    first = seen.setdefault((scene, product), line)
                    if first != line:
                        reason = "duplicate"
                        detail = f"scene {scene} and product {product} already paired on line {first}"
                    else:
                        records.append(PairRecord(line, scene, product, categories[product], box))
        if reason is not None:
            rejects.append(Reject(line, reason, detail, raw.strip()[:200]))
    return records, rejects


def read_categories(path: str | os.PathLike) -> dict[str, str]:
    """Read a category file: a JSON object mapping product id/signature -> category (path)."""
    path = Path(path)
    text = read_text_file(path)
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise PairFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PairFileError(f"{path}: expected a JSON object mapping product -> category, "
                            f"got a {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise PairFileError(f"{path}: {len(bad)} product(s) have an empty or non-string category, "
                            f"e.g. {bad[0]!r}")
    return {k: v.strip() for k, v in obj.items()}
