"""Apply catalogue changes to the current index without retraining: a new version, and how far it has drifted.

    current build (index.faiss, row metadata, embeddings.f16.npy) + an embeddings folder (+ removals)
      -> kept rows (neither removed nor replaced) keep their codes and list order, renumbered densely
      -> added and changed products are encoded with the trained quantizer and appended
      -> a new numbered build, published only once complete (index.layout); the old one serves until then

An incremental folder (`embed-catalog --incremental`) carries its delta (_delta.parquet): its added and
changed products are upserted and its removed ones dropped. Any other folder is taken as upserts of all
its products. Rows keep their float32 values, so a Flat index (or IVF searched with nprobe = nlist)
answers exactly as a build from scratch on the final catalogue would. What no update can do is move the
centroids: the report compares list imbalance and the new rows' fit to their centroids with the values
measured at the last full build, and says when a rebuild is due.
"""
from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import defaults
from common.errors import InputError
from common.files import atomic_path
from index.build import centroid_score, list_imbalance
from index.embedding_shards import iter_embeddings, read_delta, read_manifest, read_metadata
from index.layout import (
    EMBEDDINGS_FILE,
    FILES,
    FORMAT_VERSION,
    INDEX_FILE,
    IVFDATA_FILE,
    KEEP_VERSIONS,
    IndexInfo,
    IvfStats,
    SourceInfo,
    UpdateReport,
    build_lock,
    new_version_dir,
    prune,
    publish,
    resolve,
)
from index.rows import read_table, write_row_metadata
from index.search import exact_search, flat_view, index_kind, ivf_of, search
from index.select import recall_at_k

BLOCK = 65_536


class UpdateError(InputError):
    """The update cannot be applied as asked (another model, an index type that cannot remove, nothing left)."""


def update_index(index_dir: str | Path, embeddings_dir: str | Path | None = None, *, remove: Iterable[str] = (),
                 keep_versions: int = KEEP_VERSIONS, n_eval_queries: int = 200, seed: int = defaults.SEED,
                 log: Callable[[str], None] | None = None) -> IndexInfo:
    """Write a new version of `index_dir` with the folder's products upserted and `remove` dropped; return its info."""
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    manifest = read_manifest(embeddings_dir) if embeddings_dir is not None else None
    remove = [str(r) for r in remove]
    if manifest is None and not remove:
        raise UpdateError("nothing to apply", hint="give {option:embeddings_dir} and/or {option:remove}")
    root = Path(index_dir)
    resolve(root)                     # a missing or broken index is named before the lock creates the folder
    with build_lock(root):
        build, version = resolve(root)
        old_info = IndexInfo.read(build)
        upserts, removed, meta = _changes(manifest, old_info, remove)
        old_table = read_table(build, old_info.format_version)
        old_ids = old_table.column("product_id")
        drop = pc.is_in(old_ids, value_set=pa.array(sorted(set(removed) | set(upserts)), pa.string()))
        keep = np.flatnonzero(~drop.to_numpy(zero_copy_only=False))
        missing = sorted(set(removed) - set(old_ids.to_pylist()) - set(upserts))
        if missing:
            say(f"{len(missing)} product(s) to remove are not in the index (e.g. {missing[0]!r}): nothing to drop")
        n_new = len(keep) + len(upserts)
        if n_new == 0:
            raise UpdateError("the update would leave the index empty; rebuild it from a catalogue instead")
        index = _read_for_update(build, old_info)
        kind = index_kind(index)
        if kind not in ("flat", "ivf"):
            raise UpdateError(f"a {old_info.factory} index cannot drop or replace vectors",
                              hint="run {step:build-index} on the new embeddings instead")
        out = new_version_dir(root)
        xu = _upsert_vectors(manifest, meta, upserts, old_info.dim)
        with atomic_path(out / EMBEDDINGS_FILE) as emb_tmp, atomic_path(out / INDEX_FILE) as index_tmp:
            emb = _write_f16(build, keep, xu, emb_tmp)
            counts = write_row_metadata(out, _concat_tables(old_table.take(pa.array(keep)), meta)).counts()
            index = _renumber(index, keep, out / IVFDATA_FILE if old_info.ondisk else None)
            if len(xu):
                index.add(xu)                  # ids len(keep).. : the rows after the kept ones
            if index.ntotal != n_new:
                raise RuntimeError(f"updated index holds {index.ntotal} vectors, expected {n_new}")
            recall = _recall(index, emb, old_info, n_eval_queries, seed)
            replaced = int(pc.sum(pc.is_in(old_ids, value_set=pa.array(upserts, pa.string()))).as_py() or 0)
            drift = _drift(index, xu, old_info, n_changes=len(upserts) + len(old_table) - len(keep) - replaced)
            faiss.write_index(index, str(index_tmp))
        ivfdata = out / IVFDATA_FILE
        info = old_info.replace(
            n=n_new, version=out.name, format_version=FORMAT_VERSION,
            files=list(FILES) + ([IVFDATA_FILE] if ivfdata.exists() else []),
            counts_per_category=counts,
            recall=old_info.recall.replace(**recall),
            memory=old_info.memory.replace(index_file_bytes=(out / INDEX_FILE).stat().st_size,
                                           ivfdata_bytes=ivfdata.stat().st_size if ivfdata.exists() else 0,
                                           embeddings_f16_bytes=(out / EMBEDDINGS_FILE).stat().st_size),
            source=SourceInfo(embeddings_dir=str(embeddings_dir) if embeddings_dir else None,
                              catalog_fingerprint=manifest.catalog_fingerprint if manifest else
                              old_info.source.catalog_fingerprint),
            update=UpdateReport(from_version=version, upserted=len(upserts), dropped=len(old_table) - len(keep),
                                removals_not_found=len(missing), seconds=round(time.perf_counter() - t_start, 3),
                                **drift),
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        info.write(out)          # last: the build is complete
        publish(root, out)
        pruned = prune(root, keep_versions)
    say(f"wrote {out} ({len(upserts)} upserted, {len(old_table) - len(keep)} dropped)"
        + (f"; pruned {', '.join(pruned)}" if pruned else ""))
    return info


def _changes(manifest, old_info: IndexInfo, remove: list[str]) -> tuple[list[str], list[str], pa.Table | None]:
    """(product ids to upsert, ids to remove, the upserts' metadata rows in folder order)."""
    if manifest is None:
        return [], remove, None
    if manifest.checkpoint_sha256 != old_info.checkpoint_sha256:
        raise UpdateError(f"{manifest.root} was embedded with checkpoint {manifest.checkpoint_sha256[:12]}..., the "
                          f"index with {str(old_info.checkpoint_sha256)[:12]}...: re-embed and rebuild instead")
    if manifest.dim != old_info.dim:
        raise UpdateError(f"{manifest.root} holds {manifest.dim}-d embeddings, the index {old_info.dim}-d")
    delta = read_delta(manifest)
    source = old_info.source.catalog_fingerprint
    base = manifest.incremental.base_fingerprint if manifest.incremental else None
    if delta is not None and source and base and source != base:
        raise UpdateError(f"{manifest.root} holds the changes since another catalogue than the one this index "
                          "was built or last updated from; apply the deltas in order, or rebuild")
    meta = read_metadata(manifest)
    meta = meta.append_column("_row", pa.array(np.arange(len(meta), dtype=np.int64)))
    if delta is None:
        upserts = meta.column("product_id").to_pylist()
    else:
        kinds = delta.column("change").to_numpy(zero_copy_only=False)
        ids = np.asarray(delta.column("product_id").to_pylist(), dtype=object)
        upserts = ids[kinds != "removed"].tolist()
        remove = remove + ids[kinds == "removed"].tolist()
        meta = meta.filter(pc.is_in(meta.column("product_id"), value_set=pa.array(upserts, pa.string())))
        if len(meta) != len(upserts):
            raise UpdateError(f"{manifest.root}: _delta.parquet lists products the shards do not hold")
        upserts = meta.column("product_id").to_pylist()
    overlap = set(upserts) & set(remove)
    if overlap:
        raise UpdateError(f"product {sorted(overlap)[0]!r} is both in the embeddings to add and among the removals",
                          hint="leave it out of {option:remove}")
    return upserts, remove, meta


def _upsert_vectors(manifest, meta: pa.Table | None, upserts: list[str], dim: int) -> np.ndarray:
    """float32 embeddings of the upserted rows (in `meta` order), streamed from the shards."""
    if meta is None or not upserts:
        return np.zeros((0, dim), np.float32)
    rows = meta.column("_row").to_numpy()
    out = np.empty((len(rows), manifest.dim), np.float32)
    for start, xb in iter_embeddings(manifest):
        lo, hi = np.searchsorted(rows, [start, start + len(xb)])
        out[lo:hi] = xb[rows[lo:hi] - start]
    return out


def _concat_tables(kept: pa.Table, meta: pa.Table | None) -> pa.Table:
    if meta is None:
        return kept
    meta = meta.drop_columns(["_row"])
    meta = meta.cast(pa.schema([pa.field(f.name, pa.string()) for f in meta.schema]))
    return pa.concat_tables([kept, meta], promote_options="default")


def _write_f16(build: Path, keep: np.ndarray, xu: np.ndarray, path: Path) -> np.memmap:
    old = np.load(build / EMBEDDINGS_FILE, mmap_mode="r")
    emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(keep) + len(xu), old.shape[1]))
    for s in range(0, len(keep), BLOCK):
        block = keep[s:s + BLOCK]
        emb[s:s + len(block)] = old[block]
    emb[len(keep):] = xu
    emb.flush()
    return emb


def _read_for_update(build: Path, info: IndexInfo) -> faiss.Index:
    """The current index, read into memory (its lists are rewritten); on-disk lists stay mapped, read-only."""
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if info.ondisk else 0
    return faiss.read_index(str(build / INDEX_FILE), flags)


def _renumber(index: faiss.Index, keep: np.ndarray, ivfdata: Path | None) -> faiss.Index:
    """The index holding only the kept rows, renumbered 0..len(keep)-1 in their old order."""
    if index_kind(index) == "flat":
        view = flat_view(index)
        fresh = faiss.IndexFlat(index.d, index.metric_type)
        for s in range(0, len(keep), BLOCK):
            fresh.add(np.ascontiguousarray(view[keep[s:s + BLOCK]]))
        return fresh
    ivf = ivf_of(index)
    old_to_new = np.full(ivf.ntotal, -1, dtype=np.int64)
    old_to_new[keep] = np.arange(len(keep), dtype=np.int64)
    src, cs = ivf.invlists, ivf.code_size
    entries = []
    for lst in range(ivf.nlist):
        size = src.list_size(lst)
        if size:
            ids = old_to_new[faiss.rev_swig_ptr(src.get_ids(lst), size)]
            sel = ids >= 0
            codes = faiss.rev_swig_ptr(src.get_codes(lst), size * cs).reshape(size, cs)
            entries.append((lst, np.ascontiguousarray(ids[sel]), np.ascontiguousarray(codes[sel])))
    if ivfdata is not None:
        lists = faiss.OnDiskInvertedLists(ivf.nlist, cs, str(ivfdata))
    else:
        lists = faiss.ArrayInvertedLists(ivf.nlist, cs)
    for lst, ids, codes in entries:
        if len(ids):
            lists.add_entries(lst, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    ivf.ntotal = index.ntotal = len(keep)
    return index


def _recall(index, emb, info: IndexInfo, nq: int, seed: int) -> dict:
    """Recall@k of the updated index (its stored search params) on perturbed rows against exact search."""
    k = min(int(info.recall.k), len(emb))
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(emb), size=min(nq, len(emb)), replace=False)
    xq = np.asarray(emb[rows], dtype=np.float32)
    xq += rng.normal(0, float(info.recall.query_noise) / np.sqrt(xq.shape[1]),
                     xq.shape).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    I_ref = exact_search(xq, emb, k)[1]
    neighbours = search(index, xq, k, info.search_params, embeddings=emb)[1]
    return {"after_update": round(recall_at_k(neighbours, I_ref, k), 5), "after_update_queries": len(xq)}


def _drift(index, xu: np.ndarray, info: IndexInfo, *, n_changes: int) -> dict:
    """How far the lists have drifted since the last full build, and whether a rebuild is due.

    `n_changes` counts products added, changed or removed by this update (a change once)."""
    prev = info.update or UpdateReport()
    n_build = int(prev.n_at_build if prev.n_at_build is not None else info.n or 1)
    churn = float(prev.churn_since_build) + n_changes / max(1, n_build)
    report = {"n_at_build": n_build, "churn_since_build": round(churn, 5)}
    reasons = []
    if churn > defaults.REBUILD_CHURN:
        reasons.append(f"{churn:.0%} of the rows changed since the last full build (> {defaults.REBUILD_CHURN:.0%})")
    ivf = ivf_of(index)
    built = info.ivf or IvfStats()
    if ivf is not None:
        imbalance = list_imbalance(ivf)
        report.update(imbalance=round(imbalance, 4), build_imbalance=built.imbalance)
        if built.imbalance and imbalance > defaults.REBUILD_IMBALANCE_RATIO * built.imbalance:
            reasons.append(f"inverted-list imbalance {imbalance:.2f} vs {built.imbalance:.2f} at the build "
                           f"(> {defaults.REBUILD_IMBALANCE_RATIO}x): searches probe longer lists")
        if len(xu):
            score = centroid_score(index, xu)
            report.update(new_rows_centroid_score=round(score, 5), build_centroid_score=built.centroid_score)
            if built.centroid_score is not None and built.centroid_score - score > defaults.REBUILD_SCORE_DROP:
                reasons.append(f"new rows lie further from their centroids (mean inner product {score:.3f} vs "
                               f"{built.centroid_score:.3f} at the build): the centroids no longer fit the catalogue")
    report.update(rebuild_due=bool(reasons), rebuild_reasons=reasons)
    return report
