"""Time STL ingestion: the real category files + a generated 72,000-line pair file, against bare JSON parsing."""
from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

from jobs.data.stl_ingest import ingest_stl

SHARED_STL = Path(__file__).resolve().parents[2] / "shared/data/stl"
N_PAIRS = 72_000
REPEATS = 3


def pair_lines(products: list[str], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    scenes = [hashlib.md5(f"scene{i}".encode()).hexdigest() for i in range(n * 2 // 3)]
    lines = []
    for i in range(n):
        left, top = rng.uniform(0, 0.6), rng.uniform(0, 0.6)
        box = [round(left, 4), round(top, 4), round(left + rng.uniform(0.05, 0.4), 4),
               round(top + rng.uniform(0.05, 0.4), 4)]
        lines.append(json.dumps({"product": rng.choice(products), "scene": scenes[i % len(scenes)], "bbox": box}))
    return lines


def best_of(fn, repeats: int = REPEATS) -> tuple[float, float]:
    """Best wall and best CPU seconds of `repeats` runs (CPU time is steadier on a shared machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("fashion-cat.json", "home-cat.json"):
            cat_file = SHARED_STL / name
            source = "real"
            if not cat_file.exists():   # keep the benchmark runnable elsewhere, and say so
                source = "synthetic (real file absent)"
                cat_file = tmp / name
                cats = {hashlib.md5(f"{name}{i}".encode()).hexdigest(): f"Cat|{i % 10}" for i in range(38_111)}
                cat_file.write_text(json.dumps(cats))
            products = sorted(json.loads(cat_file.read_text()))
            pairs = tmp / f"pairs-{name}"
            pairs.write_text("\n".join(pair_lines(products, N_PAIRS)) + "\n")

            # baseline: only reading and json-decoding the same inputs
            def bare(cat_file: Path = cat_file, pairs: Path = pairs) -> None:
                json.loads(cat_file.read_text())
                decode = json.JSONDecoder().decode
                [decode(line) for line in pairs.read_text().splitlines()]

            baseline, baseline_cpu = best_of(bare)
            result = None

            def ingest(cat_file: Path = cat_file, pairs: Path = pairs, name: str = name) -> None:
                nonlocal result
                result = ingest_stl(pairs, cat_file, tmp / f"out-{name}")

            seconds, cpu = best_of(ingest)
            print(f"stl ingest {name} ({source}: {result.products:,} products, {len(result.per_category)} categories) "
                  f"+ {N_PAIRS:,} pair lines: {seconds:.2f} s wall, {cpu:.2f} s CPU "
                  f"({N_PAIRS / seconds:,.0f} lines/s); {cpu / baseline_cpu:.1f}x the CPU of bare JSON decoding "
                  f"({baseline_cpu:.2f} s); best of {REPEATS}")


if __name__ == "__main__":
    main()
