"""Query latency of two-stage retrieval against one bare backbone forward, in the same run.

    python -m bench.bench_query [--queries 30] [--cold 3] [--candidates C] [--k 20] [--synthetic N]

(1) bare: the backbone's forward on one pre-decoded, pre-resized uint8 scene tensor (inference_mode,
    the retriever's own backbone and input layout, channels_last) -- the floor of any query, since a
    scene must pass the network once;
(2) warm query: ``Retriever.retrieve(path)`` on a loaded retriever, end to end: JPEG decode, resize,
    backbone, heads, FAISS top-C by the retriever's stage 1 (--stage1: each category's hybrid query, or the
    global embedding), exact hybrid re-rank of the C candidates, top-k hits with their metadata. Also timed
    from an already decoded PIL image.
Bare and query runs are interleaved scene by scene and medians are compared, so a slow patch of a
shared machine hits both alike. Target: warm query / bare forward <= 1.15.
(2b) whole look: ``Retriever.look(path)`` (every category of the index: one forward, stage 1 per category,
    one batched re-rank, attention grids, presence), interleaved with the same scene's ``retrieve``. Target:
    look / retrieve <= 1.5 (issue 13).
(2c) stage 1 by hybrid query against stage 1 by global embedding, on the same encoded scenes, interleaved:
    retrieve (every category: one search per category by its own query, against one search) and the whole
    look (per category either way); the ratios say what searching by the hybrid costs.
(2d) the default C (Retriever.candidate_count: k plus a margin where stage 1 is by the hybrid over an exact
    search) against C = 200, the same encoded scenes, interleaved: what re-ranking only what can reach the
    top k saves.
(3) cold: wall time of the ``ctl-retrieve`` command in a fresh process (interpreter, imports, checkpoint
    and index load, one query), beside ``python -c "import torch, faiss"`` for scale.

Runs on the embedded sample's artifacts (data/runs/sample/checkpoint.pt, data/index/sample under the
working folder, as `make demo` leaves them) when they exist and match; otherwise it builds a synthetic
catalogue in a temporary folder: an EfficientNet-Lite0 embedder (ImageNet trunk, untrained heads) and
N random unit product embeddings indexed by the real ``build_index``; latency does not depend on what
the embeddings mean. ``--threads N`` sets torch's intra-op threads for the whole run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from common import defaults
from common.errors import ArtifactError
from common.files import sha256_of
from index.build import build_index
from index.layout import IndexDirError, read_info
from jobs.training.run_layout import RunLayout
from pipeline.backbones import BackboneWeightsError
from pipeline.checkpoint import save_checkpoint
from pipeline.embedder import build_embedder
from pipeline.images import load_image
from retrieval.retriever import Retriever, one_thread

SAMPLE_CATEGORIES = ["shoes", "handbags", "pants", "tops", "sunglasses", "hats", "necklaces", "coats"]


def synthetic_artifacts(root: Path, n: int, n_scenes: int, dim: int = 128,
                        seed: int = 0) -> tuple[Path, Path, list[Path]]:
    """A checkpoint, an index over n random unit embeddings, and photo-like scene JPEGs."""


    torch.manual_seed(seed)
    try:
        embedder = build_embedder(categories=SAMPLE_CATEGORIES, backbone_weights="imagenet", dim=dim)
        weights = "imagenet"
    except BackboneWeightsError:  # same network and cost with random weights
        embedder = build_embedder(categories=SAMPLE_CATEGORIES, backbone_weights="random", dim=dim)
        weights = "random"
    ckpt = root / "checkpoint.pt"
    sha = save_checkpoint(ckpt, embedder.eval(), config={"backbone_weights": weights, "dim": dim})
    rng = np.random.default_rng(seed)
    xb = rng.normal(size=(n, dim)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    (root / "emb").mkdir(parents=True, exist_ok=True)
    cats = [SAMPLE_CATEGORIES[i % len(SAMPLE_CATEGORIES)] for i in range(n)]
    pq.write_table(pa.table({
        "product_id": [f"p{i:06d}" for i in range(n)], "category": cats,
        "image_path": [str(root / "none.jpg")] * n,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(xb.reshape(-1)), dim),
    }), root / "emb" / "part-00000.parquet")
    (root / "emb" / "_manifest.json").write_text(json.dumps({
        "checkpoint_sha256": sha, "backbone": embedder.backbone_name, "dim": dim, "complete": True,
        "shards": [{"name": "part-00000.parquet", "index": 0, "rows": n, "rejected": 0}]}))
    build_index(root / "emb", root / "index")
    scenes = []
    for i in range(n_scenes):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((256, 256), Image.BICUBIC), dtype=np.int16)
        img = np.clip(field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
        path = root / f"scene{i:03d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        scenes.append(path)
    return ckpt, root / "index", scenes


def sample_artifacts(n_scenes: int) -> tuple[Path, Path, list[Path]] | None:
    """The embedded sample's checkpoint, index and held-out scenes, if they are built and match."""
    ckpt, index_dir = defaults.CHECKPOINT.resolve(), defaults.INDEX_DIR.resolve()  # from the working folder
    if not ckpt.is_file():
        return None

    try:
        if read_info(index_dir).checkpoint_sha256 != sha256_of(ckpt):
            return None
    except IndexDirError:
        return None
    scene_dir = defaults.SAMPLE_DIR.resolve() / "images" / "scenes"
    try:
        scenes = [scene_dir / f"{sid}.jpg" for sid in sorted(RunLayout(defaults.RUN_DIR).read_split().test)]
    except ArtifactError:
        scenes = sorted(scene_dir.glob("*.jpg"))
    scenes = [p for p in scenes if p.is_file()][:n_scenes]
    return (ckpt, index_dir, scenes) if scenes else None


def find_artifacts(synthetic: int, n_scenes: int, *, prefix: str) -> tuple[Path, Path, list[Path], str, Path | None]:
    """(checkpoint, index dir, scenes, what they are, temporary folder to remove or None): the sample's
    artifacts unless `synthetic` asks for N synthetic products (or the sample's are missing: 2,500)."""
    found = None if synthetic else sample_artifacts(n_scenes)
    if found is not None:
        return (*found, "embedded sample (data/runs/sample, data/index/sample)", None)
    n = synthetic or 2500
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    print(f"building a synthetic catalogue of {n} products in {tmp} ...", flush=True)
    return (*synthetic_artifacts(tmp, n, n_scenes), f"synthetic ({n} random unit embeddings, "
            "EfficientNet-Lite0 trunk)", tmp)


def _ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def stage_times(retriever, scene: Path, *, k: int, candidates: int | None) -> list[float]:
    """One query stage by stage, as Retriever.retrieve runs it (explains where the time goes), in seconds."""
    backbone = retriever.embedder.backbone
    t0 = time.perf_counter()
    x = retriever.scene_tensor(load_image(scene))
    t1 = time.perf_counter()
    with torch.inference_mode():
        fmap = backbone(x)
        t2 = time.perf_counter()
        with one_thread():
            f_s, f_i = retriever.embedder.scene_from_features(fmap)
    t3 = time.perf_counter()
    with one_thread():
        count = retriever.candidate_count(k, candidates).count
        rows = retriever.stage1_batch(f_s, f_i, count)[0]
        t4 = time.perf_counter()
        d = retriever.rerank(f_s, f_i, rows)
        t5 = time.perf_counter()
        order = np.lexsort((rows, d["global"], d["hybrid"]))[:k]
        retriever.hits_at(rows, d, order)
    t6 = time.perf_counter()
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5]


def warm(retriever, scenes: list[Path], *, queries: int, k: int, candidates: int | None, look_k: int) -> dict:
    backbone = retriever.embedder.backbone
    pil = [load_image(p) for p in scenes]
    tensors = [retriever.scene_tensor(img) for img in pil]  # the very input the retriever feeds its backbone
    for i in range(3):  # warm-up: allocator, oneDNN primitives, FAISS, page cache
        with torch.inference_mode():
            backbone(tensors[i % len(tensors)])
        retriever.retrieve(scenes[i % len(scenes)], k=k, candidates=candidates)
        retriever.look(scenes[i % len(scenes)], k=look_k, candidates=candidates)
    t_bare, t_path, t_pil, t_look, t_look_all = [], [], [], [], []
    t_after = {"retrieve": [], "look": []}
    c_bare, c_path, c_look = [], [], []  # process CPU seconds: less sensitive to the share of the cores we got
    stages = {"decode+resize": [], "backbone": [], "heads": [], "stage 1 (FAISS top-C)": [],
              "stage 2 (hybrid re-rank)": [], "top-k hits": []}
    for q in range(queries):
        j = q % len(scenes)
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.inference_mode():
            backbone(tensors[j])
        t_bare.append(time.perf_counter() - t0)
        c_bare.append(time.process_time() - c0)
        c0, t0 = time.process_time(), time.perf_counter()
        retriever.retrieve(scenes[j], k=k, candidates=candidates)
        t_path.append(time.perf_counter() - t0)
        c_path.append(time.process_time() - c0)
        t0 = time.perf_counter()
        retriever.retrieve(pil[j], k=k, candidates=candidates)
        t_pil.append(time.perf_counter() - t0)
        c0, t0 = time.process_time(), time.perf_counter()
        retriever.look(scenes[j], k=look_k, candidates=candidates)     # missing categories only (the default)
        t_look.append(time.perf_counter() - t0)
        c_look.append(time.process_time() - c0)
        t0 = time.perf_counter()
        retriever.look(scenes[j], k=look_k, candidates=candidates, include_present=True)   # every category
        t_look_all.append(time.perf_counter() - t0)
        # After the forward: an encoded scene's flat retrieval against its whole look (every category).
        encoded = retriever.encode_scene(pil[j])
        t0 = time.perf_counter()
        retriever.retrieve(encoded, k=k, candidates=candidates)
        t_after["retrieve"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        retriever.look(encoded, k=look_k, candidates=candidates, include_present=True)
        t_after["look"].append(time.perf_counter() - t0)
        for name, seconds in zip(stages, stage_times(retriever, scenes[j], k=k, candidates=candidates), strict=True):
            stages[name].append(seconds)
    bare = _ms(t_bare)
    return {
        "queries": queries, "scenes": len(scenes), "k": k, "candidates": retriever.candidate_count(k, candidates).count,
        "look_candidates": max(retriever.candidate_count(look_k, candidates, category=c).count
                               for c in retriever.categories),
        "bare_forward_ms": bare,
        "query_from_path_ms": _ms(t_path), "query_from_pil_ms": _ms(t_pil),
        "ratio_path": _ms(t_path) / bare, "ratio_pil": _ms(t_pil) / bare,
        # Best of each series: other processes only ever add time, so this is the least noisy ratio.
        "best_bare_ms": 1e3 * min(t_bare), "best_query_from_path_ms": 1e3 * min(t_path),
        "ratio_best": min(t_path) / min(t_bare),
        "cpu_bare_ms": _ms(c_bare), "cpu_query_from_path_ms": _ms(c_path), "ratio_cpu": _ms(c_path) / _ms(c_bare),
        "stages_ms": {name: _ms(v) for name, v in stages.items()},
        "look_k": look_k, "look_from_path_ms": _ms(t_look), "look_all_categories_ms": _ms(t_look_all),
        "ratio_look": _ms(t_look) / _ms(t_path), "ratio_look_all": _ms(t_look_all) / _ms(t_path),
        "ratio_look_best": min(t_look_all) / min(t_path),
        "cpu_look_ms": _ms(c_look), "ratio_look_cpu": _ms(c_look) / _ms(c_path),
        "categories": len(retriever.categories),
        "after_forward_ms": {name: _ms(v) for name, v in t_after.items()},
    }


def after_forward(variants: dict, encoded: list, *, queries: int, k: int, look_k: int) -> dict:
    """Median ms of retrieve and the whole look on encoded scenes for each variant (name -> (retriever, candidates)),
    interleaved scene by scene; the first two rounds are a warm-up (category blocks, selectors)."""
    times = {(name, what): [] for name in variants for what in ("retrieve", "look")}
    for q in range(queries + 2):
        scene = encoded[q % len(encoded)]
        for name, (r, candidates) in variants.items():
            t0 = time.perf_counter()
            r.retrieve(scene, k=k, candidates=candidates)
            t1 = time.perf_counter()
            r.look(scene, k=look_k, candidates=candidates, include_present=True)
            t2 = time.perf_counter()
            if q >= 2:
                times[name, "retrieve"].append(t1 - t0)
                times[name, "look"].append(t2 - t1)
    return {f"{name}_{what}_ms": _ms(v) for (name, what), v in times.items()}


def stage1_modes(retriever, scenes: list[Path], *, queries: int, k: int, candidates: int | None,
                 look_k: int) -> dict:
    """Median ms after the forward of retrieve and the whole look with each stage 1 (and, without `candidates`, each
    one's default C), interleaved scene by scene."""
    variants = {mode: (retriever.with_stage1(mode), candidates) for mode in defaults.STAGE1_MODES}
    ms = after_forward(variants, [retriever.encode_scene(p) for p in scenes], queries=queries, k=k, look_k=look_k)
    return {**ms, "ratio_retrieve": ms["hybrid_retrieve_ms"] / ms["global_retrieve_ms"],
            "ratio_look": ms["hybrid_look_ms"] / ms["global_look_ms"]}


def candidate_counts(retriever, scenes: list[Path], *, queries: int, k: int, look_k: int) -> dict:
    """Median ms after the forward of retrieve and the whole look with the default C against C = 200, interleaved."""
    variants = {"default": (retriever, None), "fixed": (retriever, defaults.CANDIDATES)}
    ms = after_forward(variants, [retriever.encode_scene(p) for p in scenes], queries=queries, k=k, look_k=look_k)
    return {**ms, "default_c": retriever.candidate_count(k).count, "fixed_c": defaults.CANDIDATES,
            "ratio_retrieve": ms["default_retrieve_ms"] / ms["fixed_retrieve_ms"],
            "ratio_look": ms["default_look_ms"] / ms["fixed_look_ms"]}


def cold(ckpt: Path, index_dir: Path, scene: Path, *, runs: int, k: int) -> dict:
    exe = Path(sys.executable).parent / "ctl-retrieve"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "jobs.retrieve_cli"]
    cmd += ["--scene", str(scene), "--k", str(k), "--checkpoint", str(ckpt), "--index-dir", str(index_dir)]
    imports = [sys.executable, "-c", "import torch, faiss"]
    t_cli, t_imp = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(imports, check=True)
        t_imp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        t_cli.append(time.perf_counter() - t0)
    return {"runs": runs, "ctl_retrieve_s": statistics.median(t_cli), "ctl_retrieve_best_s": min(t_cli),
            "import_torch_faiss_s": statistics.median(t_imp), "lines": len(out.stdout.splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--cold", type=int, default=3, help="ctl-retrieve processes to time (0: skip)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=None,
                    help="stage-1 candidates (default: the retriever's own choice, Retriever.candidate_count)")
    ap.add_argument("--stage1", choices=defaults.STAGE1_MODES, default=defaults.STAGE1,
                    help="what the warm figures' stage 1 searches by")
    ap.add_argument("--look-k", type=int, default=defaults.LOOK_K, help="products per category in the look")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="use a synthetic catalogue of N products even when the sample's artifacts exist")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the backbone (0: torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)


    ckpt, index_dir, scenes, source, tmp = find_artifacts(args.synthetic, 10, prefix="bench-query-")
    try:
        t0 = time.perf_counter()
        retriever = Retriever.load(checkpoint=ckpt, index_dir=index_dir, stage1=args.stage1)
        load_s = time.perf_counter() - t0
        info = retriever.index.info
        print(f"catalogue: {source}: {len(retriever)} products, index {info.factory} "
              f"(mmap={retriever.index.mmap}), backbone {retriever.embedder.backbone_name}, "
              f"d={retriever.embedder.dim}; loaded in {load_s:.2f} s")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"load average {os.getloadavg()[0]:.2f} before")
        w = warm(retriever, scenes, queries=args.queries, k=args.k, candidates=args.candidates, look_k=args.look_k)
        print(f"\nwarm, median of {w['queries']} queries (k={w['k']}, C={w['candidates']}, "
              f"look C={w['look_candidates']}, stage 1 by "
              f"{retriever.stage1}):")
        print(f"  bare backbone forward, 1 scene       {w['bare_forward_ms']:8.1f} ms")
        print(f"  retrieve(path)                       {w['query_from_path_ms']:8.1f} ms   "
              f"x{w['ratio_path']:.3f} of the forward (target <= 1.15)")
        print(f"  retrieve(PIL image)                  {w['query_from_pil_ms']:8.1f} ms   x{w['ratio_pil']:.3f}")
        print(f"  best of each: forward {w['best_bare_ms']:.1f} ms, "
              f"retrieve(path) {w['best_query_from_path_ms']:.1f} ms   x{w['ratio_best']:.3f}")
        print(f"  CPU time (median): forward {w['cpu_bare_ms']:.1f} ms, "
              f"retrieve(path) {w['cpu_query_from_path_ms']:.1f} ms   x{w['ratio_cpu']:.3f}")
        print(f"  look(path), k={w['look_k']} per category, missing ones {w['look_from_path_ms']:8.1f} ms   "
              f"x{w['ratio_look']:.3f} of retrieve(path)")
        print(f"  look(path), all {w['categories']} categories        {w['look_all_categories_ms']:8.1f} ms   "
              f"x{w['ratio_look_all']:.3f} of retrieve(path) (target <= 1.5), best-of x{w['ratio_look_best']:.3f}, "
              f"CPU time (missing ones) x{w['ratio_look_cpu']:.3f}")
        after = w["after_forward_ms"]
        print(f"  after the forward (encoded scene): retrieve {after['retrieve']:.2f} ms, "
              f"look over all categories {after['look']:.2f} ms")
        print("  stage by stage:")
        for name, ms in w["stages_ms"].items():
            print(f"    {name:<34} {ms:8.2f} ms")
        s1 = stage1_modes(retriever, scenes, queries=args.queries, k=args.k, candidates=args.candidates,
                          look_k=args.look_k)
        print("  stage 1 by hybrid query against by global embedding, each with its default C (after the forward, "
              "interleaved):")
        print(f"    retrieve  {s1['hybrid_retrieve_ms']:6.2f} ms against {s1['global_retrieve_ms']:6.2f} ms   "
              f"x{s1['ratio_retrieve']:.3f}")
        print(f"    look, all categories  {s1['hybrid_look_ms']:6.2f} ms against {s1['global_look_ms']:6.2f} ms   "
              f"x{s1['ratio_look']:.3f}")
        cc = candidate_counts(retriever, scenes, queries=args.queries, k=args.k, look_k=args.look_k)
        print(f"  the default C ({cc['default_c']} for k={args.k}) against C = {cc['fixed_c']} (after the forward, "
              f"interleaved):")
        print(f"    retrieve  {cc['default_retrieve_ms']:6.2f} ms against {cc['fixed_retrieve_ms']:6.2f} ms   "
              f"x{cc['ratio_retrieve']:.3f}")
        print(f"    look, all categories  {cc['default_look_ms']:6.2f} ms against {cc['fixed_look_ms']:6.2f} ms   "
              f"x{cc['ratio_look']:.3f}")
        print(f"  (load average {os.getloadavg()[0]:.2f} after the warm run)")
        result = {"source": source, "n_products": len(retriever), "factory": info.factory,
                  "load_s": load_s, "stage1": retriever.stage1, "warm": w, "stage1_modes": s1,
                  "candidate_counts": cc}
        if args.cold > 0:
            c = cold(ckpt, index_dir, scenes[0], runs=args.cold, k=args.k)
            print(f"\ncold ctl-retrieve (fresh process, load + 1 query), median of {c['runs']}: "
                  f"{c['ctl_retrieve_s']:.2f} s (best {c['ctl_retrieve_best_s']:.2f} s); "
                  f"`python -c 'import torch, faiss'` alone: {c['import_torch_faiss_s']:.2f} s")
            result["cold"] = c
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        ok = w["ratio_path"] <= 1.15
        print(f"\n{'PASS' if ok else 'MISS'}: warm query / bare forward = {w['ratio_path']:.3f} median, "
              f"{w['ratio_best']:.3f} best-of (target <= 1.15)")
        ok = w["ratio_look_all"] <= 1.5
        print(f"{'PASS' if ok else 'MISS'}: whole look (all categories) / retrieve = {w['ratio_look_all']:.3f} "
              f"median (target <= 1.5)")
        return 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
