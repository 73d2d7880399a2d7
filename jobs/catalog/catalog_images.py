"""The embed-catalog reader: catalogue rows -> decoded, resized images, a bad image a reject with its reason."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import torch

from common.errors import InputError
from index.embedding_shards import BASE_COLUMNS, EMBEDDING
from jobs.data.catalog_manifest import read_catalog
from pipeline.images import ImageError, draft_floor, image_to_array, image_to_tensor, load_image

# A product image file larger than this is refused before it is read into memory (the pixel limit
# of pipeline.images is checked only once the bytes are in).
MAX_IMAGE_BYTES = 256 * 2**20


def short_reason(path: str, message: str) -> str:
    """ImageError messages start with the path (or <bytes>), which the reject line carries already."""
    for prefix in (f"{path}: ", f"{Path(path)}: ", "<bytes>: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def read_image_bytes(path: str) -> bytes:
    """The bytes of an image file: a local path, or a URI that pyarrow's filesystems read (s3://, gs://, hdfs://)."""
    if "://" in path:
        try:
            fs, inner = pafs.FileSystem.from_uri(path)
            info = fs.get_file_info(inner)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ImageError(f"{path}: cannot open ({exc})") from None
        if info.type == pafs.FileType.NotFound:
            raise ImageError(f"{path}: no such file")
        if info.type == pafs.FileType.Directory:
            raise ImageError(f"{path}: is a folder, not an image")
        size = info.size
        opener = lambda: fs.open_input_stream(inner)  # noqa: E731
    else:
        local = Path(path)
        if not local.exists():
            raise ImageError(f"{path}: no such file")
        if local.is_dir():
            raise ImageError(f"{path}: is a folder, not an image")
        size = local.stat().st_size
        opener = lambda: open(local, "rb")  # noqa: E731, SIM115 - opened in the with below
    if size is not None and size > MAX_IMAGE_BYTES:
        raise ImageError(f"{path}: {size:,} bytes exceeds the {MAX_IMAGE_BYTES:,} byte limit")
    with opener() as fh:
        return fh.read()


def decode_row(path: str, size: int, *, draft: bool = False) -> tuple[torch.Tensor | None, str | None, str | None]:
    """(uint8 3 x size x size tensor, None, sha256 of the file) or (None, reason, None): never raises.

    The file is read once: its bytes are hashed (what `--incremental` compares) and decoded. `draft`:
    a large JPEG is DCT-scaled while decoding (pipeline.images.draft_floor), not decoded at full size.
    """
    try:
        data = read_image_bytes(path)
        img = load_image(data, draft_size=draft_floor(size) if draft else None)
        return image_to_tensor(img, size), None, hashlib.sha256(data).hexdigest()
    except ImageError as exc:
        return None, short_reason(path, str(exc)), None
    except Exception as exc:  # noqa: BLE001 - one odd file must never stop the job
        return None, f"cannot decode ({type(exc).__name__}: {exc})", None


def decode_into(path: str, out: np.ndarray, *, draft: bool = False) -> tuple[str | None, str | None]:
    """decode_row's pixels written into `out` (uint8 size x size x 3, e.g. a shared-memory slot):
    (None, sha256 of the file) or (reject reason, None); never raises."""
    try:
        data = read_image_bytes(path)
        img = load_image(data, draft_size=draft_floor(out.shape[0]) if draft else None)
        out[...] = image_to_array(img, out.shape[0])
        return None, hashlib.sha256(data).hexdigest()
    except ImageError as exc:
        return short_reason(path, str(exc)), None
    except Exception as exc:  # noqa: BLE001 - one odd file must never stop the job
        return f"cannot decode ({type(exc).__name__}: {exc})", None


def _string_column(col):
    if pa.types.is_string(col.type):
        return col
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else json.dumps(v, sort_keys=True, default=str) for v in col.to_pylist()],
                        pa.string())


def load_catalog_table(manifest: Path, limit: int | None) -> pa.Table:
    """The catalogue rows to embed: base columns first, every other column as strings (carried to results)."""
    table = read_catalog(manifest)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1, got {limit}")
        table = table.slice(0, limit)
    if EMBEDDING in table.column_names:
        raise InputError(f"{manifest}: column {EMBEDDING!r} clashes with the output column; rename it")
    extras = [c for c in table.column_names if c not in BASE_COLUMNS]
    columns = {c: _string_column(table.column(c)) for c in (*BASE_COLUMNS, *extras)}
    return pa.table(columns).combine_chunks()
