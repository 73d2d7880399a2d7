"""The index directory contract: numbered builds, a pointer to the current one, and the files of each build.

    INDEX_DIR/
      CURRENT                 the name of the build readers load ("v000003"), replaced atomically
      v000001/ v000002/ ...   one build each:
        index.faiss           the FAISS index (inner product over unit vectors; search knobs inside)
        ids.arrow             row -> product_id, category, image_path and the catalogue's extra columns
                              (Arrow IPC, uncompressed: memory-mapped, zero copy; index.rows)
        category_rows.npy     every category's rows, grouped by category name (sorted), memory-mapped
        embeddings.f16.npy    row-aligned float16 embeddings, memory-mapped for the exact re-rank
        index.ivfdata         only with --ondisk: the inverted lists (FAISS OnDiskInvertedLists), memory-mapped
        info.json             written last: checkpoint sha256, backbone, d, factory, params, counts, recall

A build (full or incremental) writes a new numbered folder, finishes it with info.json, and only then
moves the pointer; readers resolve the pointer when they load, so a reader never sees a half-built
index and the previous build keeps serving until the swap (and after it, for readers that hold it).
A folder without info.json is a build still running or one that crashed. A directory holding the
files directly (the layout before versions) still loads, as version None.

Format versions (info.json's ``format_version``): 2 keeps the row metadata in the two memory-mapped
files above, so a loaded index's anonymous memory does not grow with the catalogue; 1 (before) kept it
in ids.parquet, read into RAM at load. Both load.

info.json's fields are :class:`IndexInfo` (with its sections :class:`RecallReport`, :class:`MemoryReport`,
...): every reader and writer goes through ``IndexInfo.from_json`` / ``to_json``. Keys a section does not
know are kept in its ``extra`` and written back, so a file written by a newer build survives a round trip.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from common import defaults
from common.errors import ArtifactError
from common.files import exclusive_lock, write_json_atomic, write_text_atomic

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.arrow"
CATEGORY_ROWS_FILE = "category_rows.npy"
LEGACY_IDS_FILE = "ids.parquet"        # format 1's row metadata
EMBEDDINGS_FILE = "embeddings.f16.npy"
INFO_FILE = "info.json"
IVFDATA_FILE = "index.ivfdata"
FILES = (INDEX_FILE, IDS_FILE, CATEGORY_ROWS_FILE, EMBEDDINGS_FILE, INFO_FILE)
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
POINTER_FILE = "CURRENT"
LOCK_FILE = ".lock"
KEEP_VERSIONS = 3
_VERSION = re.compile(r"v(\d{6,})")


class IndexDirError(ArtifactError):
    """The directory is not a complete, consistent index (missing files, half-built, mismatched rows)."""


def row_files(format_version: int) -> tuple[str, ...]:
    """The files holding a build's row metadata in that format."""
    return (LEGACY_IDS_FILE,) if format_version < 2 else (IDS_FILE, CATEGORY_ROWS_FILE)


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
        raise IndexDirError(f"index directory {root} does not exist", hint="run {step:build-index} first")
    name = current_version(root)
    if name is not None:
        build = root / name
        if not is_complete(build):
            raise IndexDirError(f"{root / POINTER_FILE} names {name}, which is missing or has no {INFO_FILE}",
                                hint="rerun {step:build-index}")
        return build, name
    if (root / INFO_FILE).is_file():
        return root, None
    if any(root.glob(f".{INFO_FILE}.*.tmp")) or (root / INDEX_FILE).exists() or list_versions(root):
        raise IndexDirError(f"{root} has no {INFO_FILE}: the index is missing or only half built",
                            hint="rerun {step:build-index}")
    raise IndexDirError(f"{root} is not an index directory (no {POINTER_FILE} or {INFO_FILE})",
                        hint="run {step:build-index}")


def build_lock(index_dir: Path):
    """One writer at a time per index directory (builds and updates); readers never take it."""
    busy = IndexDirError(f"another build or update is writing to {index_dir}")
    return exclusive_lock(Path(index_dir) / LOCK_FILE, busy)


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


# ---------------------------------------------------------------------------------------------- info.json
class _Section:
    """A JSON object with known fields (a frozen dataclass) and the keys it does not know kept in `extra`."""

    nested: ClassVar[dict[str, type]] = {}     # field name -> _Section class of that sub-object

    @classmethod
    def from_dict(cls, data: dict | None):
        if data is None:
            return None
        if not isinstance(data, dict):
            raise IndexDirError(f"{INFO_FILE}: expected an object for {cls.__name__}, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: (cls.nested[k].from_dict(v) if k in cls.nested else v) for k, v in data.items() if k in known}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        """The object as written: None-valued fields left out, unknown keys (extra) kept."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            out[f.name] = value.to_dict() if isinstance(value, _Section) else value
        return {**self.extra, **out}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RecallReport(_Section):
    """Recall@k of the index against exact search, as measured at the build (and after the last update)."""

    k: int = defaults.RECALL_K
    value: float | None = None
    target: float | None = None
    target_met: bool | None = None
    queries: int | None = None
    query_noise: float = defaults.RECALL_QUERY_NOISE
    method: str | None = None
    tuning_recall: float | None = None
    tuning_trials: list | None = None
    after_update: float | None = None
    after_update_queries: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CategoryRecallReport(_Section):
    """Recall@k of category-filtered search on the largest categories, with the category search params."""

    k: int = defaults.RECALL_K
    value: float | None = None
    target: float | None = None
    target_met: bool | None = None
    categories: list | None = None
    queries_per_category: int | None = None
    tuning_trials: list | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LatencyReport(_Section):
    """Search latency measured at the build (ms)."""

    single_query_median: float | None = None
    batch_per_query: float | None = None
    threads: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryReport(_Section):
    """The memory budget the index was chosen under and the sizes of the build's files."""

    budget_bytes: int | None = None
    estimated_index_bytes: int | None = None
    index_file_bytes: int | None = None
    ivfdata_bytes: int = 0
    embeddings_f16_bytes: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class IvfStats(_Section):
    """What an update compares with to see drift: list imbalance and how well the centroids fit the rows."""

    nlist: int | None = None
    imbalance: float | None = None
    centroid_score: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceInfo(_Section):
    """Where the build's (or the last update's) embeddings came from."""

    embeddings_dir: str | None = None
    catalog_fingerprint: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class UpdateReport(_Section):
    """What the last incremental update did and how far the lists have drifted since the full build."""

    from_version: str | None = None
    upserted: int = 0
    dropped: int = 0
    removals_not_found: int = 0
    seconds: float | None = None
    n_at_build: int | None = None
    churn_since_build: float = 0.0
    imbalance: float | None = None
    build_imbalance: float | None = None
    new_rows_centroid_score: float | None = None
    build_centroid_score: float | None = None
    rebuild_due: bool = False
    rebuild_reasons: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class IndexInfo(_Section):
    """info.json: what a build is (model, index type, tuned knobs, counts) and what was measured while building it.

    Versioned by `format_version` (the build folder's file format); a file without it is the earliest
    format. Sections missing from an older file load as their defaults.
    """

    format_version: int = 1
    checkpoint_sha256: str | None = None
    backbone: str | None = None
    dim: int = 0
    metric: str = "inner_product"
    factory: str | None = None
    index_kind: str | None = None
    search_params: dict = field(default_factory=dict)
    category_search_params: dict | None = None
    rerank: bool = False
    n: int = 0
    counts_per_category: dict = field(default_factory=dict)
    extra_columns: list = field(default_factory=list)
    build_seconds: float | None = None
    recall: RecallReport = field(default_factory=RecallReport)
    category_recall: CategoryRecallReport | None = None
    latency_ms: LatencyReport | None = None
    memory: MemoryReport = field(default_factory=MemoryReport)
    ondisk: bool = False
    phases: dict = field(default_factory=dict)
    parallel: dict | None = None
    ivf: IvfStats | None = None
    source: SourceInfo = field(default_factory=SourceInfo)
    update: UpdateReport | None = None
    selection_reason: str | None = None
    intent: str | None = None
    seed: int | None = None
    embeddings_dir: str | None = None
    faiss_version: str | None = None
    created_at: str | None = None
    files: list = field(default_factory=list)
    version: str | None = None
    extra: dict = field(default_factory=dict)

    nested: ClassVar[dict[str, type]] = {
        "recall": RecallReport, "category_recall": CategoryRecallReport, "latency_ms": LatencyReport,
        "memory": MemoryReport, "ivf": IvfStats, "source": SourceInfo, "update": UpdateReport}

    @classmethod
    def from_dict(cls, data: dict) -> IndexInfo:
        data = dict(data)
        data.setdefault("format_version", 1)
        for name in ("recall", "memory", "source"):        # required sections: null in a file means empty
            if data.get(name) is None:
                data[name] = {}
        return super().from_dict(data)

    @classmethod
    def from_json(cls, text: str, *, where: str | Path = INFO_FILE) -> IndexInfo:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IndexDirError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}); rebuild the index") \
                from None
        if not isinstance(data, dict):
            raise IndexDirError(f"{where} holds a JSON {type(data).__name__}, not an object; rebuild the index")
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, build_dir: str | Path) -> IndexInfo:
        """The info.json of one build folder."""
        path = Path(build_dir) / INFO_FILE
        return cls.from_json(path.read_text(encoding="utf-8"), where=path)

    def write(self, build_dir: str | Path) -> None:
        """Write info.json atomically into a build folder (last: its presence marks the build complete)."""
        write_json_atomic(Path(build_dir) / INFO_FILE, self.to_dict())


def read_info(index_dir: str | Path) -> IndexInfo:
    """The info.json of the current build (what readers would load)."""
    build, _ = resolve(index_dir)
    return IndexInfo.read(build)
