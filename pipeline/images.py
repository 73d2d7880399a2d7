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


def load_image(source: str | os.PathLike | bytes, *, draft_size: int | None = None) -> Image.Image:
    """Open, validate and fully decode an image as RGB, applying its EXIF orientation.

    With `draft_size`, a JPEG is decoded at a reduced scale (libjpeg's DCT scaling by 1/2, 1/4 or 1/8)
    as long as both sides stay at least `draft_size` (see `draft_floor`); other formats are unaffected.
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
                if draft_size is not None and img.format == "JPEG":
                    img.draft(None, (draft_size, draft_size))
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


def draft_floor(size: int) -> int:
    """The smallest side a JPEG may be DCT-scaled down to before the BILINEAR resize to `size`: twice `size`.

    Measured with ImageNet EfficientNet-Lite0 on 150 natural photos of 448-1,200 px (bench/bench_jpeg_draft.py,
    docs/benchmarks-embed.md): scaling down to `size` itself moved product embeddings to a minimum cosine of
    0.975 against the exact decode; twice `size` leaves photos under 896 px untouched and keeps larger ones
    at 0.997 or above (mean 0.9994) for a 2x faster decode. Neither meets the 0.999 agreement the exact
    path keeps, which is why draft decoding is opt-in (`--jpeg-draft`).
    """
    return 2 * size


def query_draft_floor(size: int) -> int:
    """The smallest side a scene *query's* JPEG may be DCT-scaled down to before the resize to `size`: 4 x `size`.

    A scene query is one upload, often a phone photo: decoding a 4032 x 3024 JPEG in full costs more than a
    forward of CPU. Measured with bench/bench_scene_decode.py (48 photos cut from natural images with sensor-like
    noise, the sample-trained model over the 21,198-product index, 2 shared cores): decode + resize at a short
    side of 2,268 px 49.5 -> 20.2 ms (2.5x), at 3,024 px 88.9 -> 33.1 ms (2.7x), the top-20 answer 0.96-0.97 the
    same as the exact decode's (a quality-90 re-save of the same photo keeps 0.995); the catalogue's 2 x floor
    (draft_floor) was 3.8x at 3,024 px but kept 0.94. Where the answer is known (the 178 held-out test pairs
    upscaled to 3,024 px phone photos) the draft is level with the exact decode: HR@10 +0.017 [+0.000, +0.039],
    HR@50 +0.006 [-0.011, +0.022]. Under 2 x this floor
    (1,792 px at 224) nothing is scaled: the same pixels as the exact decode.
    """
    return 4 * size


def load_scene(source: str | os.PathLike | bytes, size: int, *, exact: bool = False) -> Image.Image:
    """A scene query's picture as RGB: load_image, a large JPEG DCT-scaled while both sides stay at least
    query_draft_floor(size) (`exact`: decoded in full). One definition for every query path (the service's
    uploads, ctl-retrieve, Retriever given a path); the catalogue and training keep their own decode."""
    return load_image(source, draft_size=None if exact else query_draft_floor(size))


def image_to_array(img: Image.Image, size: int) -> np.ndarray:
    """Resize to size x size (Pillow's BILINEAR) and return the uint8 H x W x 3 pixels."""
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Resize to size x size and return a uint8 CHW tensor; the backbone normalises it."""
    # Transpose in numpy: torch's permute().contiguous() runs on intra-op threads, slow in busy workers.
    return torch.from_numpy(np.ascontiguousarray(image_to_array(img, size).transpose(2, 0, 1)))
