"""The index directory contract: numbered builds, a pointer to the current one, and the files of each build.

    INDEX_DIR/
      CURRENT                 the name of the build readers load ("v000003"), replaced atomically
      v000001/ v000002/ ...   one build each:
        index.faiss           the FAISS index (inner product over unit vectors; search knobs inside)
        ids.parquet           row -> product_id, category, image_path and the catalogue's extra columns
        embeddings.f16.npy    row-aligned float16 embeddings, memory-mapped for the exact re-rank
        index.ivfdata         only with --ondisk: the inverted lists (FAISS OnDiskInvertedLists), memory-mapped
        info.json             written last: checkpoint sha256, backbone, d, factory, params, counts, recall

A build (full or incremental) writes a new numbered folder, finishes it with info.json, and only then
moves the pointer; readers resolve the pointer when they load, so a reader never sees a half-built
index and the previous build keeps serving until the swap (and after it, for readers that hold it).
A folder without info.json is a build still running or one that crashed. A directory holding the
four files directly (the layout before versions) still loads, as version None.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from common.errors import ArtifactError
from common.files import exclusive_lock, write_text_atomic

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
EMBEDDINGS_FILE = "embeddings.f16.npy"
INFO_FILE = "info.json"
IVFDATA_FILE = "index.ivfdata"
FILES = (INDEX_FILE, IDS_FILE, EMBEDDINGS_FILE, INFO_FILE)
FORMAT_VERSION = 1
POINTER_FILE = "CURRENT"
LOCK_FILE = ".lock"
KEEP_VERSIONS = 3
_VERSION = re.compile(r"v(\d{6,})")


class IndexDirError(ArtifactError):
    """The directory is not a complete, consistent index (missing files, half-built, mismatched rows)."""


def version_name(number: int) -> str:
    return f"v{number:06d}"


def version_number(name: str) -> int | None:
    match = _VERSION.fullmatch(name)
    return int(match.group(1)) if match else None


def list_versions(index_dir: str | Path) -> list[Path]:
    """Every numbered build folder (complete or not), oldest first."""
    root = Path(index_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and version_number(p.name) is not None]
    return sorted(found, key=lambda p: version_number(p.name))


def is_complete(build_dir: Path) -> bool:
    return (build_dir / INFO_FILE).is_file()


def current_version(index_dir: str | Path) -> str | None:
    """The pointer's content (e.g. "v000003"), or None when there is no pointer. Cheap: watch it to see swaps."""
    path = Path(index_dir) / POINTER_FILE
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if version_number(name) is None:
        raise IndexDirError(f"{path} holds {name[:40]!r}, not a build name like v000001; rebuild the index")
    return name


def resolve(index_dir: str | Path) -> tuple[Path, str | None]:
    """(folder holding the current build's files, its version name or None for a flat directory)."""
    root = Path(index_dir)
    if not root.is_dir():
        raise IndexDirError(f"index directory {root} does not exist (run `ctl build-index` first)")
    name = current_version(root)
    if name is not None:
        build = root / name
        if not is_complete(build):
            raise IndexDirError(f"{root / POINTER_FILE} names {name}, which is missing or has no {INFO_FILE}; "
                                "rerun `ctl build-index`")
        return build, name
    if (root / INFO_FILE).is_file():
        return root, None
    if any(root.glob(f".{INFO_FILE}.*.tmp")) or (root / INDEX_FILE).exists() or list_versions(root):
        raise IndexDirError(f"{root} has no {INFO_FILE}: the index is missing or only half built; "
                            "rerun `ctl build-index`")
    raise IndexDirError(f"{root} is not an index directory (no {POINTER_FILE} or {INFO_FILE}); "
                        "run `ctl build-index`")


def build_lock(index_dir: Path):
    """One writer at a time per index directory (builds and updates); readers never take it."""
    return exclusive_lock(Path(index_dir) / LOCK_FILE, IndexDirError(f"another build or update is writing to {index_dir}"))


def new_version_dir(index_dir: Path) -> Path:
    """Create the next numbered build folder (call under build_lock); leftovers of crashed builds are removed."""
    current = current_version(index_dir)
    for build in list_versions(index_dir):
        if build.name != current and not is_complete(build):
            shutil.rmtree(build, ignore_errors=True)     # a crashed build: nobody reads it
    versions = list_versions(index_dir)
    number = (version_number(versions[-1].name) + 1) if versions else 1
    build = index_dir / version_name(number)
    build.mkdir(parents=True)
    return build


def publish(index_dir: Path, build_dir: Path) -> None:
    """Point readers at a finished build: the pointer file is replaced atomically."""
    if not is_complete(build_dir):
        raise IndexDirError(f"refusing to publish {build_dir}: it has no {INFO_FILE}")
    write_text_atomic(index_dir / POINTER_FILE, build_dir.name + "\n")


def prune(index_dir: Path, keep: int = KEEP_VERSIONS) -> list[str]:
    """Remove complete builds older than the newest `keep` (never the current one); returns their names.

    A reader that still holds a removed build keeps working: its files stay open (memory-mapped)
    until it lets them go.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    current = current_version(index_dir)
    complete = [b for b in list_versions(index_dir) if is_complete(b)]
    removed = []
    for build in complete[:-keep]:
        if build.name != current:
            shutil.rmtree(build, ignore_errors=True)
            removed.append(build.name)
    return removed


def read_info(index_dir: str | Path) -> dict:
    """The info.json of the current build (what readers would load)."""
    build, _ = resolve(index_dir)
    return json.loads((build / INFO_FILE).read_text(encoding="utf-8"))
