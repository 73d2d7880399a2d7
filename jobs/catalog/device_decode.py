"""Decoding on the job's device: JPEG batches through torchvision's decoder (nvJPEG on CUDA), resized there.

The CPU path (:mod:`jobs.catalog.catalog_images`) decodes each image with Pillow in a worker process;
on a GPU that is the wall (2,699 img/s against the network's 19,031 on an H200, docs/benchmarks-gpu.md).
Here CPU threads only read bytes; JPEGs that the device decoder takes as they are go to it in one
batched call, and everything else — PNG and other formats, CMYK, an EXIF rotation, sizes outside the
pixel limits, bytes the decoder refuses — goes to the CPU decoder image by image, so the pixel policy
(EXIF rotation, mode conversion, limits) and the reject reasons stay those of pipeline.images.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from jobs.catalog.catalog_images import read_image_bytes, short_reason
from pipeline.images import MAX_IMAGE_PIXELS, ImageError, image_to_tensor, load_image

JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112
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


def resize_on_device(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 3 x H x W images (any sizes, on one device) -> uint8 N x 3 x size x size, bilinear with antialias.

    Antialiased bilinear is torchvision's match for Pillow's BILINEAR resize (which widens its filter when
    shrinking), the CPU path's resize: the two differ by rounding, not by method. Images of one size are
    resized together.
    """
    if not images:
        raise ValueError("no images to resize")
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images[0].device)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i} must be 3 x H x W, got shape {tuple(img.shape)}")
        by_shape.setdefault(tuple(img.shape[1:]), []).append(i)
    for idx in by_shape.values():
        x = torch.stack([images[i] for i in idx]).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[idx] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def decode_on_cpu(raw: RawImage, size: int) -> tuple[torch.Tensor | None, str | None]:
    """The CPU path's pixels for bytes already read: (uint8 3 x size x size, None) or (None, reject reason)."""
    try:
        return image_to_tensor(load_image(raw.data), size), None
    except ImageError as exc:
        return None, short_reason("<bytes>", str(exc))
    except Exception as exc:  # noqa: BLE001 - one odd file must never stop the job
        return None, f"cannot decode ({type(exc).__name__}: {exc})"
