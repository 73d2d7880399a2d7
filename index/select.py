"""Choose a FAISS index from catalogue size, dimension and memory budget, then tune its search knobs."""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common import defaults

METRIC = "inner_product"
FLAT_MAX_N = 50_000          # exact search up to here: ~5 ms per query on 2 cores at d=128, recall 1.0
PQ_MIN_N = 10_000            # 8-bit PQ needs ~39 * 256 training points per sub-quantizer
NLIST_MAX = 65_536
HNSW_M = 32
PQ_M_CANDIDATES = (64, 48, 32, 24, 16, 12, 8)
RERANK_FACTORS = (2, 4, 8, 16)
INTENTS = ("balanced", "low_latency", "exact")

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class IndexSpec:
    """What to build: a FAISS factory string, its starting search parameters and why it was chosen."""

    factory: str
    kind: str                       # "flat" | "ivf" | "hnsw" | "ivfpq" | "other"
    search_params: dict = field(default_factory=dict)   # nprobe / efSearch / rerank_factor
    reason: str = ""
    estimated_bytes: int = 0
    nlist: int | None = None
    metric: str = METRIC

    @property
    def rerank(self) -> bool:
        return self.kind == "ivfpq" or int(self.search_params.get("rerank_factor", 0)) > 0


def parse_bytes(text: str | int) -> int:
    """'4GB' -> 4_000_000_000, '512MiB' -> 536_870_912, 1000 -> 1000 (SI units; KiB/MiB/GiB are binary)."""
    if isinstance(text, (int, np.integer)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 4GB, 512MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def nlist_for(n: int) -> int:
    """About 4*sqrt(n) inverted lists, a power of two, with >= 39 training points per list, capped."""
    if n < 39:
        return 1
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    most = 2 ** int(math.log2(n // 39))
    return int(max(1, min(target, most, NLIST_MAX)))


def estimate_bytes(kind: str, n: int, d: int, *, nlist: int = 0, m: int = 0) -> int:
    """RAM the index needs once built (inverted lists keep an int64 id per vector)."""
    if kind == "flat":
        return n * 4 * d
    if kind == "ivf":
        return n * (4 * d + 8) + nlist * 4 * d
    if kind == "hnsw":
        # level 0 keeps 2*M int32 links, upper levels add ~1/M of that, plus level/offset bookkeeping
        return int(n * (4 * d + 2 * HNSW_M * 4 * (1 + 1 / HNSW_M) + 16))
    if kind == "ivfpq":
        return n * (m + 8) + nlist * 4 * d + 256 * 4 * d
    raise ValueError(f"unknown index kind {kind!r}")


def select_index(n: int, d: int, *, memory_budget_bytes: int, intent: str = defaults.INDEX_INTENT) -> IndexSpec:
    """Pick the index autofaiss-style: exact while small, IVF/HNSW as it grows, PQ codes when over budget.

    Pure function of (n, d, budget, intent); the search parameters it returns are starting points
    that `tune_search_params` refines on measured recall.
    """
    if n <= 0 or d <= 0:
        raise ValueError(f"need n > 0 and d > 0, got n={n}, d={d}")
    if intent not in INTENTS:
        raise ValueError(f"intent must be one of {INTENTS}, got {intent!r}")
    budget = int(memory_budget_bytes)
    flat_bytes = estimate_bytes("flat", n, d)
    if flat_bytes <= budget and (n <= FLAT_MAX_N or intent == "exact"):
        why = "exact search requested" if n > FLAT_MAX_N else f"n={n} <= {FLAT_MAX_N}: exact search is fast enough"
        return IndexSpec("Flat", "flat", {}, f"{why}; {format_bytes(flat_bytes)} fits the budget", flat_bytes)
    if n > FLAT_MAX_N:
        nlist = nlist_for(n)
        hnsw_bytes = estimate_bytes("hnsw", n, d)
        if intent == "low_latency" and hnsw_bytes <= budget:
            return IndexSpec(f"HNSW{HNSW_M},Flat", "hnsw", {"efSearch": 64},
                             f"n={n}, low-latency intent: graph search over full vectors "
                             f"({format_bytes(hnsw_bytes)} fits the budget)", hnsw_bytes)
        ivf_bytes = estimate_bytes("ivf", n, d, nlist=nlist)
        if ivf_bytes <= budget:
            return IndexSpec(f"IVF{nlist},Flat", "ivf", {"nprobe": 8},
                             f"n={n} > {FLAT_MAX_N}: inverted lists over full vectors, nlist ~ 4*sqrt(n) "
                             f"({format_bytes(ivf_bytes)} fits the budget)", ivf_bytes, nlist=nlist)
    # full vectors do not fit: compressed codes, exact re-rank from the memory-mapped float16 copy
    if n < PQ_MIN_N:
        raise ValueError(
            f"memory budget {format_bytes(budget)} is too small for {n} vectors of dim {d} "
            f"(flat needs {format_bytes(flat_bytes)}) and {n} < {PQ_MIN_N} is too few to train PQ codes; "
            "raise the budget")
    nlist = nlist_for(n)
    for m in PQ_M_CANDIDATES:
        if d % m or m > d // 2:
            continue
        pq_bytes = estimate_bytes("ivfpq", n, d, nlist=nlist, m=m)
        if pq_bytes <= budget:
            return IndexSpec(f"IVF{nlist},PQ{m}x8", "ivfpq", {"nprobe": 16, "rerank_factor": 4},
                             f"full vectors need {format_bytes(estimate_bytes('ivf', n, d, nlist=nlist))} "
                             f"> budget {format_bytes(budget)}: {m}-byte PQ codes ({format_bytes(pq_bytes)}) "
                             "with exact re-rank from embeddings.f16.npy (memory-mapped)",
                             pq_bytes, nlist=nlist)
    smallest = min((m for m in PQ_M_CANDIDATES if d % m == 0 and m <= d // 2), default=None)
    need = estimate_bytes("ivfpq", n, d, nlist=nlist, m=smallest) if smallest else flat_bytes
    raise ValueError(f"memory budget {format_bytes(budget)} is too small for {n} vectors of dim {d}: "
                     f"the most compressed index needs about {format_bytes(need)}")


def spec_for_factory(factory: str, n: int, d: int) -> IndexSpec:
    """Describe a user-forced factory string with default starting search parameters."""
    key = factory.replace(" ", "")
    nlist_match = re.search(r"IVF(\d+)", key)
    nlist = int(nlist_match.group(1)) if nlist_match else None
    lossy = bool(re.search(r"(PQ|SQ|LSH|RaBitQ|RQ|LSQ)", key.split(",")[-1])) or "PQ" in key
    if key == "Flat":
        kind, params = "flat", {}
    elif nlist is not None:
        kind = "ivfpq" if lossy else "ivf"
        params = {"nprobe": min(nlist, 16 if lossy else 8)}
    elif key.startswith("HNSW") or ",HNSW" in key:
        kind, params = "hnsw", {"efSearch": 64}
    else:
        kind, params = "other", {}
    if lossy:
        params["rerank_factor"] = 4
    est = 0
    try:
        m = re.search(r"PQ(\d+)", key)
        est = estimate_bytes(kind if kind != "other" else "flat", n, d, nlist=nlist or 0,
                             m=int(m.group(1)) if m else 0)
    except ValueError:
        pass
    return IndexSpec(key, kind, params, "factory forced by the caller", est, nlist=nlist)


def recall_at_k(neighbours: np.ndarray, reference: np.ndarray, k: int) -> float:
    """Fraction of the exact top-k (ignoring -1 padding) found in the approximate top-k."""
    neighbours, reference = np.asarray(neighbours)[:, :k], np.asarray(reference)[:, :k]
    hits = total = 0
    for row, ref in zip(neighbours, reference, strict=True):
        ref = ref[ref >= 0]
        total += len(ref)
        hits += len(np.intersect1d(row[row >= 0], ref, assume_unique=True))
    return hits / total if total else 1.0


@dataclass
class Tuning:
    """Outcome of the tuning step: the chosen parameters, their recall and every trial."""

    search_params: dict
    recall: float
    target_met: bool
    trials: list = field(default_factory=list)   # [{"params":..., "recall":..., "ms_per_query":...}]


def candidate_params(spec: IndexSpec, *, k: int) -> list[dict]:
    """Parameter settings to try, cheapest first."""
    if spec.kind in ("ivf", "ivfpq"):
        nlist = spec.nlist or 1
        nprobes = sorted({min(nlist, 2 ** i) for i in range(0, 17) if 2 ** i <= 2 * nlist})
        if spec.kind == "ivf" and not spec.rerank:
            return [{"nprobe": p} for p in nprobes]
        return [{"nprobe": p, "rerank_factor": f} for p in nprobes for f in RERANK_FACTORS]
    if spec.kind == "hnsw":
        efs = [e for e in (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048) if e >= k]
        extra = {"rerank_factor": spec.search_params["rerank_factor"]} if spec.rerank else {}
        return [{"efSearch": e, **extra} for e in efs]
    return [dict(spec.search_params)]


def tune_search_params(search_fn: Callable[[np.ndarray, int, dict], np.ndarray], spec: IndexSpec,
                       xq: np.ndarray, reference: np.ndarray, *, k: int = defaults.RECALL_K,
                       target_recall: float = defaults.TARGET_RECALL,
                       candidates: Sequence[dict] | None = None) -> Tuning:
    """Try parameter settings cheapest first; keep the first whose recall@k reaches the target.

    `search_fn(xq, k, params) -> neighbours` runs the built index; `reference` is the exact top-k of `xq`.
    When no setting reaches the target, the setting with the best recall is kept (target_met False).
    """
    trials = []
    best = None
    for params in (candidates if candidates is not None else candidate_params(spec, k=k)):
        t0 = time.perf_counter()
        neighbours = search_fn(xq, k, params)
        ms = (time.perf_counter() - t0) * 1e3 / max(1, len(xq))
        r = recall_at_k(neighbours, reference, k)
        trials.append({"params": dict(params), "recall": round(r, 5), "ms_per_query": round(ms, 4)})
        if best is None or r > best[1]:
            best = (dict(params), r)
        if r >= target_recall:
            return Tuning(dict(params), r, True, trials)
    return Tuning(best[0], best[1], False, trials)
