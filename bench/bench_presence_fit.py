"""The presence head's fit: its six heads (the head and five cross-fitting folds) one at a time against together.

    python -m bench.bench_presence_fit [--rows 1050] [--channels 1432] [--regions 49] [--steps 30] [--rounds 3]

`ctl train` fits the presence head and, for its thresholds, five cross-fitting heads, each on most of the same
rows (jobs/training/presence.py). One at a time, each step of each head is two passes over every region of every
row; `fit_presence_heads` makes one pass for all of them. Synthetic maps of the sample's shape (1,050 rows: the
training scenes and their masked views, 7 x 7 regions, 1,432 channels of the multi-scale backbone, 8 categories),
the folds as `fit_with_cross_fitting` forms them. Both ways are timed in alternation (`--rounds`, medians), with
fewer steps than training's 300 (time is linear in the steps); it prints the seconds per step of each and the
ratio, and the largest difference between the two ways' probabilities (same arithmetic, another summation order).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from jobs.training.presence import FOLDS, fit_presence, fit_presence_heads, probabilities


def synthetic(rows: int, channels: int, regions: int, categories: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    side = int(round(regions ** 0.5))
    labels = (rng.random((rows, categories)) < 0.5).astype(np.float32)
    maps = np.abs(rng.normal(size=(rows, channels, side, side))).astype(np.float32)
    maps[:, :categories, 0, 0] += 2.0 * labels          # something to learn
    return maps, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1050)
    ap.add_argument("--channels", type=int, default=1432)
    ap.add_argument("--regions", type=int, default=49)
    ap.add_argument("--categories", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    maps, labels = synthetic(args.rows, args.channels, args.regions, args.categories)
    fold = np.arange(args.rows) % FOLDS
    subsets = [np.ones(args.rows, dtype=bool)] + [fold != f for f in range(FOLDS)]
    print(f"{args.rows} rows x {args.regions} regions x {args.channels} channels, {args.categories} categories, "
          f"{len(subsets)} heads, {args.steps} steps; torch threads {torch.get_num_threads()}")
    alone_s, together_s = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        alone = [fit_presence(maps[m], labels[m], steps=args.steps) for m in subsets]
        alone_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        together = fit_presence_heads(maps, labels, subsets, steps=args.steps)
        together_s.append(time.perf_counter() - t)
    a, b = statistics.median(alone_s), statistics.median(together_s)
    diff = max(float(np.abs(probabilities(x, maps[:64]) - probabilities(y, maps[:64])).max())
               for x, y in zip(alone, together, strict=True))
    print(f"one head at a time: {a:.2f} s ({a / args.steps * 1000:.0f} ms a step)")
    print(f"all heads together: {b:.2f} s ({b / args.steps * 1000:.0f} ms a step)")
    print(f"ratio (together / one at a time): {b / a:.2f}  ({a / b:.1f}x faster)")
    print(f"largest probability difference between the two ways: {diff:.2e}")


if __name__ == "__main__":
    main()
