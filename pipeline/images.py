"""Safe image loading: any file a user or a catalogue hands us becomes RGB pixels or a clear ImageError."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.errors import InputError

# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse at the limit itself.
MAX_IMAGE_PIXELS = 64_000_000


class ImageError(InputError):
    """An image that cannot be used, with a short reason naming the problem."""


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        # 16/32-bit greyscale: scale the actual range to 8 bits rather than clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")


def load_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Open, validate and fully decode an image as RGB, applying its EXIF orientation.

    Raises ImageError for a missing file, a file that is not an image, a truncated image, a
    decompression bomb or an absurd size.
    """
    if isinstance(source, (bytes, bytearray)):
        stream, name = io.BytesIO(source), "<bytes>"
    else:
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image")
        stream, name = path, str(path)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageError(f"{name}: {w}x{h} pixels exceeds the {MAX_IMAGE_PIXELS:,} pixel limit")
                if min(w, h) < 1:
                    raise ImageError(f"{name}: {w}x{h} has no pixels")
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).lower()
        reason = "truncated image" if "truncat" in msg or "broken" in msg else f"cannot decode ({exc})"
        raise ImageError(f"{name}: {reason}") from None


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Resize to size x size and return a uint8 CHW tensor; the backbone normalises it."""
    resized = img.resize((size, size), Image.BILINEAR)
    # Transpose in numpy: torch's permute().contiguous() runs on intra-op threads, slow in busy workers.
    return torch.from_numpy(np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)))
