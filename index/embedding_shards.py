"""The embeddings folder contract, written by embed-catalog and read by build-index: shards, manifest, rejects.

Layout::

    part-00000.parquet ...     product_id, category, image_path, the catalogue's other columns as
                               strings, image_sha256 (of the image file's bytes; optional: folders
                               written before it lack it), embedding: fixed_size_list<float32>[d]
                               (unit rows). Shard k holds catalogue rows [k*S, (k+1)*S) minus
                               rejects, in order.
    _manifest.json             EmbeddingsManifest: format, version, checkpoint_sha256, backbone, dim,
                               shard_size, n_shards, jpeg_draft, shards [{name, index, rows, rejected}],
                               embedded, rejected, complete, ...
    _rejects/part-00000.jsonl  the rejects of one finished shard (only where it has any)
    rejects.jsonl              {"product_id", "image_path", "reason"} per line, every shard's rejects in
                               order, written when the job completes (empty if none)
    _delta.parquet             only in the output of `embed-catalog --incremental`: product_id, change
                               ("added" | "changed" | "removed") against the base folder it was made from

A shard counts as finished only once the manifest lists it, and the manifest is rewritten after the
shard's files are in place (each write atomic), so a reader never sees half a shard and a resumed
writer redoes at most the shards it was working on. This module is the one owner of these names:
the writer's helpers and the validating reader live side by side.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import ArtifactError
from common.files import atomic_path, write_text_atomic

FORMAT = "complete-the-look/embeddings-v1"
MANIFEST = "_manifest.json"
REJECTS = "rejects.jsonl"
REJECTS_DIR = "_rejects"
SHARD_GLOB = "part-*.parquet"
BASE_COLUMNS = ("product_id", "category", "image_path")
EMBEDDING = "embedding"
IMAGE_HASH = "image_sha256"
DELTA = "_delta.parquet"
CHANGES = ("added", "changed", "removed")
NORM_TOLERANCE = 1e-2


class EmbeddingsError(ArtifactError):
    """The embeddings folder cannot be used (missing, incomplete, inconsistent); the message says why."""


START_OVER = "use {option:overwrite} to start over"


# ---------------------------------------------------------------------------------------------
# The manifest's schema (every reader and writer of _manifest.json goes through these two types)

MANIFEST_VERSION = 2   # 1 (no "version" field): --jpeg-draft was not recorded, and is read as off


@dataclass(frozen=True)
class ShardEntry:
    """One finished shard as the manifest lists it."""

    name: str
    index: int
    rows: int
    rejected: int = 0

    @classmethod
    def from_json(cls, saved: dict) -> ShardEntry:
        name, rows = (saved.get("name"), saved.get("rows")) if isinstance(saved, dict) else (None, None)
        if not isinstance(name, str) or Path(name).name != name or not isinstance(rows, int) or rows < 0:
            raise EmbeddingsError(f"bad shard entry {saved!r} (want a file name and a row count)")
        index, rejected = saved.get("index"), saved.get("rejected", 0)
        return cls(name, index if isinstance(index, int) else -1, rows, rejected if isinstance(rejected, int) else 0)


@dataclass(frozen=True)
class IncrementalRecord:
    """What an incremental run (`embed-catalog --incremental --base DIR`) records of its base and its delta."""

    base: str                                  # the base folder, resolved
    base_fingerprint: str | None = None        # which catalogue the base was made from (index/update checks it)
    reembedded: int = 0                        # images embedded again (the rest were copied from the base)
    added: int = 0
    changed: int = 0
    removed: int = 0

    @classmethod
    def from_json(cls, saved: dict | None) -> IncrementalRecord | None:
        if saved is None:
            return None
        if not isinstance(saved, dict) or "base" not in saved:
            raise EmbeddingsError(f"bad incremental record {saved!r} (want at least its base folder)")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


@dataclass
class EmbeddingsManifest:
    """What `_manifest.json` records: the run's identity (what a resume must match), its settings, the
    finished shards and whether the run completed. Totals (embedded, rejected) follow from the shards.

    Read tolerantly (`from_json`): a field this version does not know is dropped, a missing one takes its
    default, so a folder written by an older version still resumes and builds.
    """

    checkpoint_sha256: str
    backbone: str = ""
    dim: int = 0
    shard_size: int = 0
    n_input: int = 0
    n_shards: int = 0
    catalog: str | None = None                 # the catalogue file, resolved
    catalog_fingerprint: str | None = None     # of the rows embedded (jobs.catalog.embed_catalog)
    catalog_sha256: str | None = None
    checkpoint: str | None = None              # the checkpoint's path when the folder was written
    base_fingerprint: str | None = None        # --incremental: the base folder it was made from
    image_size: int | None = None
    limit: int | None = None
    jpeg_draft: bool = False                   # JPEGs decoded at a reduced DCT scale (--jpeg-draft)
    engine: str | None = None
    decode: str = "cpu"
    columns: list[str] = field(default_factory=list)
    complete: bool = False
    shards: list[ShardEntry] = field(default_factory=list)
    incremental: IncrementalRecord | None = None
    format: str = FORMAT
    version: int = MANIFEST_VERSION

    @property
    def embedded(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.shards)

    def to_json(self) -> dict:
        saved = dataclasses.asdict(self)
        saved.update(shards=[dataclasses.asdict(s) for s in sorted(self.shards, key=lambda s: s.index)],
                     embedded=self.embedded, rejected=self.rejected, rejects=REJECTS)
        return saved

    @classmethod
    def from_json(cls, saved: dict) -> EmbeddingsManifest:
        if not isinstance(saved, dict) or saved.get("format", FORMAT) != FORMAT:
            raise EmbeddingsError("not an embed-catalog manifest")
        if "checkpoint_sha256" not in saved:
            raise EmbeddingsError("the manifest lacks the field checkpoint_sha256")
        if not isinstance(saved.get("shards", []), list):
            raise EmbeddingsError("the manifest's shards are not a list")
        known = {f.name for f in dataclasses.fields(cls)} - {"shards", "version", "incremental"}
        fields = {k: v for k, v in saved.items() if k in known}
        return cls(**fields, shards=[ShardEntry.from_json(s) for s in saved.get("shards", [])],
                   incremental=IncrementalRecord.from_json(saved.get("incremental")),
                   version=int(saved.get("version", 1)))


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def reject_part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


# ---------------------------------------------------------------------------------------------
# Writing

def write_shard(out_dir: Path, index: int, rows: pa.Table, embeddings: np.ndarray, *, checkpoint_sha256: str,
                rejects: list[tuple[str, str, str]] = (), image_sha256: Sequence[str] | None = None) -> ShardEntry:
    """Write shard `index` (catalogue rows + their unit embeddings) and its rejects, each atomically.

    `rejects` holds (product_id, image_path, reason) in catalogue order; `image_sha256` the hex digest
    of each row's image bytes (what `embed-catalog --incremental` compares). Returns the manifest entry;
    the caller records it with :func:`write_manifest` once the files are in place.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != rows.num_rows:
        raise ValueError(f"shard {index}: {rows.num_rows} rows but embeddings of shape {embeddings.shape}")
    dim = embeddings.shape[1]
    if image_sha256 is not None:
        if len(image_sha256) != rows.num_rows:
            raise ValueError(f"shard {index}: {rows.num_rows} rows but {len(image_sha256)} image hashes")
        rows = rows.drop_columns([c for c in (IMAGE_HASH,) if c in rows.column_names])
        rows = rows.append_column(IMAGE_HASH, pa.array(list(image_sha256), pa.string()))
    column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim)
    table = rows.append_column(pa.field(EMBEDDING, column.type), column)
    table = table.replace_schema_metadata({"checkpoint_sha256": checkpoint_sha256, "format": FORMAT,
                                           "shard": str(index)})
    name = shard_name(index)
    with atomic_path(out_dir / name) as tmp:
        pq.write_table(table, tmp)
    reject_file = out_dir / REJECTS_DIR / reject_part_name(index)
    if rejects:
        write_text_atomic(reject_file, "".join(
            json.dumps({"product_id": pid, "image_path": path, "reason": reason}) + "\n"
            for pid, path, reason in rejects))
    else:
        reject_file.unlink(missing_ok=True)   # left by an earlier, killed attempt at this shard
    return ShardEntry(name, index, int(rows.num_rows), len(rejects))


def write_manifest(out_dir: Path, manifest: EmbeddingsManifest) -> None:
    """Rewrite the manifest atomically (its shards in order, its totals recomputed from them)."""
    manifest.shards = sorted(manifest.shards, key=lambda s: s.index)
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")


def record_shard(out_dir: Path, manifest: EmbeddingsManifest, entry: ShardEntry) -> None:
    """Add (or replace) one finished shard's entry and rewrite the manifest."""
    manifest.shards = [s for s in manifest.shards if s.index != entry.index] + [entry]
    write_manifest(out_dir, manifest)


def load_manifest(out_dir: str | Path) -> EmbeddingsManifest | None:
    """The manifest of a (possibly unfinished) folder, for a writer that resumes; None if there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise EmbeddingsError(f"{path} is not valid JSON ({exc})", hint=START_OVER) from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise EmbeddingsError(f"{path} is not an embed-catalog manifest", hint=START_OVER)
    try:
        return EmbeddingsManifest.from_json(saved)
    except (EmbeddingsError, TypeError, ValueError) as exc:
        raise EmbeddingsError(f"{path}: {exc}", hint=START_OVER) from None


def finished_shards(out_dir: Path, manifest: EmbeddingsManifest | None) -> dict[int, ShardEntry]:
    """index -> entry of the shards the manifest lists whose file is in place."""
    return {s.index: s for s in (manifest.shards if manifest else []) if (out_dir / s.name).exists()}


def merge_rejects(out_dir: Path, manifest: EmbeddingsManifest) -> None:
    """Concatenate the finished shards' reject parts into rejects.jsonl, in shard order."""
    with atomic_path(out_dir / REJECTS) as tmp, open(tmp, "wb") as dst:
        for s in sorted(manifest.shards, key=lambda s: s.index):
            if s.rejected:
                dst.write((out_dir / REJECTS_DIR / reject_part_name(s.index)).read_bytes())


def holds_output(out_dir: Path) -> bool:
    """Whether the folder holds shards or reject parts (with or without a manifest)."""
    return any(out_dir.glob(SHARD_GLOB)) or (out_dir / REJECTS_DIR).exists()


def clear_output(out_dir: Path) -> None:
    """Remove everything of this contract in out_dir (and nothing else)."""
    for path in [*out_dir.glob(SHARD_GLOB), out_dir / MANIFEST, out_dir / REJECTS, out_dir / DELTA]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out_dir / REJECTS_DIR, ignore_errors=True)


def clear_temp_files(out_dir: Path) -> None:
    """Temp files of atomic writes cut short by a kill (the caller holds the folder's lock)."""
    for folder in (out_dir, out_dir / REJECTS_DIR):
        for tmp in folder.glob(".*.tmp"):
            if tmp.name.startswith((".part-", f".{MANIFEST}.", f".{REJECTS}.", f".{DELTA}.")):
                tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Reading (build-index)

@dataclass(frozen=True)
class Manifest:
    """A finished folder's manifest, with the shard files resolved and checked."""

    root: Path
    checkpoint_sha256: str
    backbone: str
    dim: int
    shards: tuple[tuple[str, int], ...]     # (file name, rows) in manifest order
    extra_columns: tuple[str, ...] = ()
    catalog_fingerprint: str | None = None  # of the catalogue rows embedded (None for hand-made folders)
    incremental: IncrementalRecord | None = None   # made by an incremental run: its base and delta counts

    @property
    def n(self) -> int:
        return sum(rows for _, rows in self.shards)

    def path(self, name: str) -> Path:
        return self.root / name


def read_manifest(embeddings_dir: str | Path) -> Manifest:
    """Load `_manifest.json`, refuse incomplete or inconsistent folders, check every listed shard's schema."""
    root = Path(embeddings_dir)
    if not root.is_dir():
        raise EmbeddingsError(f"embeddings folder {root} does not exist", hint="run {step:embed-catalog} first")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise EmbeddingsError(f"{mpath} is missing: {root} is not a finished embed-catalog output")
    try:
        raw = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EmbeddingsError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise EmbeddingsError(f"{mpath} is not an embed-catalog manifest")
    if "format" in raw and raw["format"] != FORMAT:
        raise EmbeddingsError(f"{mpath}: format {raw['format']!r} is not {FORMAT!r}")
    missing = [key for key in ("checkpoint_sha256", "backbone", "dim", "complete", "shards") if key not in raw]
    if missing:
        raise EmbeddingsError(f"{mpath} lacks the field(s) {', '.join(missing)}")
    try:
        saved = EmbeddingsManifest.from_json(raw)
    except (EmbeddingsError, TypeError) as exc:
        raise EmbeddingsError(f"{mpath}: {exc}") from None
    if saved.complete is not True:
        raise EmbeddingsError(f"{mpath} says complete=false: the embed-catalog job has not finished "
                              "(resume it before building the index)")
    if not isinstance(saved.dim, int) or isinstance(saved.dim, bool) or saved.dim <= 0:
        raise EmbeddingsError(f"{mpath}: dim must be a positive integer, got {saved.dim!r}")
    shards = tuple((s.name, s.rows) for s in saved.shards)      # in the manifest's order
    if not shards or sum(r for _, r in shards) == 0:
        raise EmbeddingsError(f"{mpath} lists no rows: nothing to index")
    extras: list[str] = []
    for name, rows in shards:
        for col in _check_shard(root / name, saved.dim, rows):
            if col not in extras:
                extras.append(col)
    return Manifest(root, str(saved.checkpoint_sha256), str(saved.backbone), saved.dim, shards, tuple(extras),
                    saved.catalog_fingerprint, saved.incremental)


def _check_shard(path: Path, dim: int, rows: int) -> list[str]:
    """Schema and row-count checks from the parquet footer only; returns the extra columns."""
    if not path.is_file():
        raise EmbeddingsError(f"shard {path.name} is listed in the manifest but missing from {path.parent}")
    try:
        meta = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise EmbeddingsError(f"shard {path.name} is not a readable parquet file: {e}") from None
    schema = meta.schema_arrow
    absent = [c for c in (*BASE_COLUMNS, EMBEDDING) if c not in schema.names]
    if absent:
        raise EmbeddingsError(f"shard {path.name} lacks column(s) {', '.join(absent)}")
    etype = schema.field(EMBEDDING).type
    if not pa.types.is_fixed_size_list(etype) or not pa.types.is_floating(etype.value_type):
        raise EmbeddingsError(f"shard {path.name}: column embedding must be fixed_size_list<float32>[{dim}], "
                              f"got {etype}")
    if etype.list_size != dim:
        raise EmbeddingsError(f"shard {path.name} has {etype.list_size}-d embeddings but the manifest "
                              f"(and the other shards) say dim={dim}")
    if meta.metadata.num_rows != rows:
        raise EmbeddingsError(f"shard {path.name} holds {meta.metadata.num_rows} rows but the manifest "
                              f"says {rows}")
    return [c for c in schema.names if c not in (*BASE_COLUMNS, IMAGE_HASH, EMBEDDING)]


def iter_embeddings(manifest: Manifest, *, batch_rows: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first row, float32 block of shape (b, dim)) over all shards in order, streaming batches."""
    start = 0
    d = manifest.dim
    for name, _ in manifest.shards:
        pf = pq.ParquetFile(manifest.path(name))
        row_in_shard = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[EMBEDDING]):
            col = batch.column(0)
            if col.null_count:
                raise EmbeddingsError(f"shard {name} has {col.null_count} null embedding(s)")
            xb = np.ascontiguousarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
            xb = xb.reshape(-1, d)
            _check_block(xb, name, row_in_shard)
            yield start, xb
            start += len(xb)
            row_in_shard += len(xb)


def _check_block(xb: np.ndarray, name: str, row0: int) -> None:
    finite = np.isfinite(xb).all(axis=1)
    if not finite.all():
        raise EmbeddingsError(f"shard {name} row {row0 + int(np.argmin(finite))} has a non-finite embedding")
    norms = np.linalg.norm(xb, axis=1)
    bad = np.abs(norms - 1.0) > NORM_TOLERANCE
    if bad.any():
        i = int(np.argmax(bad))
        raise EmbeddingsError(f"shard {name} row {row0 + i} has norm {norms[i]:.4f}; embeddings must be "
                              "L2-normalised for inner-product search")


def read_metadata(manifest: Manifest, columns: Iterable[str] | None = None) -> pa.Table:
    """The non-embedding columns of all shards (or `columns` of them), row-aligned with `iter_embeddings`."""
    columns = list(columns) if columns is not None else [*BASE_COLUMNS, *manifest.extra_columns]
    tables = []
    for name, _ in manifest.shards:
        have = pq.ParquetFile(manifest.path(name)).schema_arrow.names
        tables.append(pq.read_table(manifest.path(name), columns=[c for c in columns if c in have]))
    tables = [t.cast(pa.schema([pa.field(f.name, pa.string()) if f.name in BASE_COLUMNS else f
                                for f in t.schema])) for t in tables]
    table = pa.concat_tables(tables, promote_options="default")
    for c in BASE_COLUMNS:
        if c in table.column_names and table.column(c).null_count:
            raise EmbeddingsError(f"column {c} has {table.column(c).null_count} null value(s)")
    return table.select([c for c in columns if c in table.column_names])


# ---------------------------------------------------------------------------------------------
# The delta of an incremental run

def write_delta(out_dir: Path, product_ids: Sequence[str], changes: Sequence[str]) -> None:
    """Record which products an incremental run added, changed or removed against its base (atomically)."""
    bad = sorted(set(changes) - set(CHANGES))
    if bad:
        raise ValueError(f"unknown change kind(s) {bad}; expected {CHANGES}")
    table = pa.table({"product_id": pa.array(list(product_ids), pa.string()),
                      "change": pa.array(list(changes), pa.string())})
    with atomic_path(out_dir / DELTA) as tmp:
        pq.write_table(table, tmp)


def read_delta(manifest: Manifest) -> pa.Table | None:
    """The delta (product_id, change) of an incremental folder, or None for a folder made by a full run."""
    path = manifest.root / DELTA
    if manifest.incremental is None and not path.exists():
        return None
    if not path.is_file():
        raise EmbeddingsError(f"{manifest.root} was made by an incremental run but {DELTA} is missing")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise EmbeddingsError(f"{path} is not a readable parquet file: {e}") from None
    if table.column_names[:2] != ["product_id", "change"]:
        raise EmbeddingsError(f"{path} must hold the columns product_id, change")
    bad = set(table.column("change").to_pylist()) - set(CHANGES)
    if bad:
        raise EmbeddingsError(f"{path} holds unknown change kind(s) {sorted(bad)}")
    return table
