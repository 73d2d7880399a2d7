"""Decoding on the job's device: JPEG batches through torchvision's decoder (nvJPEG on CUDA), resized there.

The CPU path (:mod:`jobs.catalog.catalog_images`) decodes each image with Pillow in a worker process;
on a GPU that is the wall (2,699 img/s against the network's 19,031 on an H200, docs/benchmarks-gpu.md).
Here CPU threads only read bytes; JPEGs that the device decoder takes as they are go to it in one
batched call, and everything else — PNG and other formats, CMYK, an EXIF rotation, sizes outside the
pixel limits, bytes the decoder refuses — goes to the CPU decoder image by image, so the pixel policy
(EXIF rotation, mode conversion, limits) and the reject reasons stay those of pipeline.images.
"""
from __future__ import annotations

import functools
import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import PIL
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from jobs.catalog.catalog_images import read_image_bytes, short_reason
from pipeline.images import MAX_IMAGE_PIXELS, ImageError, draft_floor, image_to_tensor, load_image

JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112
PRECISION_BITS = 22           # Pillow's fixed-point resampling: 32 - 8 - 2 bits
DEVICE_MODES = ("RGB", "L")   # nvJPEG's colour conversions; CMYK/YCCK JPEGs need Pillow's inversion rules


@dataclass(frozen=True)
class RawImage:
    """One catalogue row's file: its bytes and their sha256, or the reason it could not be read."""

    row: int
    data: bytes | None
    sha256: str | None
    reason: str | None


def read_raw(row: int, path: str) -> RawImage:
    """Read one image file's bytes (no decoding); never raises."""
    try:
        data = read_image_bytes(path)
    except ImageError as exc:
        return RawImage(row, None, None, short_reason(path, str(exc)))
    except OSError as exc:
        return RawImage(row, None, None, f"cannot read ({exc.strerror or exc})")
    return RawImage(row, data, hashlib.sha256(data).hexdigest(), None)


def device_decodable(data: bytes) -> str | None:
    """None when the device decoder can take these bytes as they are; else why the CPU decoder must.

    Reads the header only (Pillow opens lazily): format, colour mode, size and EXIF orientation.
    """
    if not data.startswith(JPEG_MAGIC):
        return "not a JPEG"
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.mode not in DEVICE_MODES:
                return f"{img.mode} JPEG"
            if width * height > MAX_IMAGE_PIXELS or min(width, height) < 1:
                return "outside the pixel limits"     # the CPU decoder rejects it with the usual reason
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "unreadable JPEG header"
    if orientation not in (None, 1):
        return f"EXIF orientation {orientation}"
    return None


def decode_on_device(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG byte strings to uint8 3 x H x W tensors on `device`, one batched call; None where refused.

    The decoder returns nothing when one image of a batch fails, so a failed batch is retried image by
    image to find the ones it refuses.
    """
    if not datas:
        return []
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they remain the pinned version's.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


@functools.lru_cache(maxsize=4096)
def pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's BILINEAR resampling of one axis as an (out_size, in_size) matrix of its fixed-point weights.

    The CPU path resizes with Pillow, and this embedding is sensitive to one grey level: on the sample,
    +-1 noise on a tenth of the pixels moves a product's embedding to cosine 0.984 (the trained model,
    measured). An approximation of the resize (torch's antialiased bilinear differs by one level) gave a
    minimum cosine of 0.989 between the two paths; reproducing Pillow's arithmetic makes them agree
    exactly. Mirrors Resample.c: precompute_coeffs (the filter widened by the scale when shrinking,
    normalised per output pixel) and normalize_coeffs_8bpc (weights scaled by 2**22, rounded half
    away from zero).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale                     # the bilinear filter's support is 1
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * ss)) for x in range(xmax)]
        ww = 0.0
        for w in k:          # summed in order, as Resample.c does: numpy's pairwise sum can differ in the last bit
            ww += w
        k = np.array([w / ww for w in k]) if ww != 0.0 else np.array(k)
        scaled = k * (1 << PRECISION_BITS)
        weights[xx, xmin:xmin + xmax] = np.where(k < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5))
    return weights


def _fixed_point_round(x: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8(ss >> 22) with ss starting at 2**21: floor((x + 2**21) / 2**22), clamped to [0, 255]."""
    return torch.floor((x + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(0, 255)


def _two_pass(x: torch.Tensor, w_h: torch.Tensor, w_v: torch.Tensor, order: str) -> torch.Tensor:
    """float64 ... x H x W -> ... x size x size: the two passes in `order` ("hv" or "vh"), each rounded and
    clipped to 8 bits as Pillow does; a pass whose size does not change is skipped, as Pillow skips it."""
    height, width, size = x.shape[-2], x.shape[-1], w_h.shape[1]
    for axis in order:
        if axis == "h" and width != size:
            x = _fixed_point_round(x @ w_h)
        elif axis == "v" and height != size:
            x = _fixed_point_round(w_v @ x)
    return x


@functools.lru_cache(maxsize=4096)
def pillow_pass_order(height: int, width: int, size: int) -> str:
    """The order of Pillow's two passes for this resize, read off a probe of that shape: "hv" or "vh".

    Pillow's resampling core runs the horizontal pass first, but the installed Pillow (13) runs the
    vertical pass first for some shapes, by a rule its release does not document (measured: every one of
    ~500 random shapes matched exactly one of the two orders). The rounding between the passes makes
    the order visible, so the device path asks Pillow once per shape instead of guessing the rule.
    """
    probe = np.random.default_rng([height, width, size]).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = torch.from_numpy(np.asarray(Image.fromarray(probe).resize((size, size), Image.BILINEAR)).copy())
    x = torch.from_numpy(probe).double().permute(2, 0, 1)
    w_h = torch.from_numpy(pil_bilinear_weights(width, size)).T
    w_v = torch.from_numpy(pil_bilinear_weights(height, size))
    for order in ("hv", "vh"):
        if torch.equal(_two_pass(x, w_h, w_v, order).to(torch.uint8).permute(1, 2, 0), expected):
            return order
    raise RuntimeError(f"cannot reproduce Pillow {PIL.__version__}'s BILINEAR resize of {width}x{height} to "
                       f"{size}x{size}; use --decode cpu")


def resize_on_device(images: list[torch.Tensor], size: int, *, chunk: int = 64) -> torch.Tensor:
    """uint8 3 x H x W images (any sizes, on one device) -> uint8 N x 3 x size x size, as Pillow's BILINEAR.

    Two passes, each a matrix product with Pillow's integer weights, rounded and clipped to 8 bits in
    between, in the order Pillow uses for that shape. In float64 every product and sum is an exact
    integer (under 2**53), so the result equals Pillow's bit for bit on any device. Images of one size
    are resized together, `chunk` at a time.
    """
    if not images:
        raise ValueError("no images to resize")
    device = images[0].device
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i} must be 3 x H x W, got shape {tuple(img.shape)}")
        by_shape.setdefault(tuple(img.shape[1:]), []).append(i)
    for (height, width), idx in by_shape.items():
        order = pillow_pass_order(height, width, size)
        w_h = torch.from_numpy(pil_bilinear_weights(width, size)).to(device).T      # W x size
        w_v = torch.from_numpy(pil_bilinear_weights(height, size)).to(device)       # size x H
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            x = torch.stack([images[i] for i in part]).double()
            out[part] = _two_pass(x, w_h, w_v, order).to(torch.uint8)
    return out


def decode_on_cpu(raw: RawImage, size: int, *, draft: bool = False) -> tuple[torch.Tensor | None, str | None]:
    """The CPU path's pixels for bytes already read: (uint8 3 x size x size, None) or (None, reject reason)."""
    try:
        return image_to_tensor(load_image(raw.data, draft_size=draft_floor(size) if draft else None), size), None
    except ImageError as exc:
        return None, short_reason("<bytes>", str(exc))
    except Exception as exc:  # noqa: BLE001 - one odd file must never stop the job
        return None, f"cannot decode ({type(exc).__name__}: {exc})"
