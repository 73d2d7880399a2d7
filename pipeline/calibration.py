"""The binary classifier "does this product complete the scene?": a distance calibrated into a probability.

Platt scaling: ``p = sigmoid(a * d + b)``, fitted by weighted maximum likelihood (Newton's method) on
(distance, label, weight) samples; with ``a < 0`` the probability falls as the distance grows. The
decision threshold is the probability with the best F1 on the samples it was fitted on. Calibration
quality is the expected calibration error over equal-width probability bins. Pure numpy; the file of
a run's calibrations (``calibration.json``) is written and read here too.

Cohort normalisation (Z-norm, as in speaker and face verification): the distance a Platt sees is the
scene's distance to the product, less the mean of the same scene's distances to a fixed cohort of
products of that category, over their standard deviation. Some scenes sit near everything and some far
from everything; one threshold on raw distances mixes them, the normalised distance asks how near the
product is *for this scene*. The cohort (its products' ids and embeddings) travels in calibration.json.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ArtifactError
from common.files import write_json_atomic

FORMAT = "complete-the-look/calibration-v2"         # v2: an optional cohort
READABLE_FORMATS = ("complete-the-look/calibration-v1", FORMAT)
FILE = "calibration.json"
BINS = 10
# Products per category in the cohort. Chosen on validation over 3 training seeds (docs/quality.md, fifth
# round): 32 / 64 / 128 / 256 gave pooled ROC-AUC 0.846-0.853 / 0.845-0.853 / 0.848-0.856 / 0.848-0.856.
COHORT_SIZE = 128
# No cohort (raw distances) when a category has fewer eligible products: a mean and spread from a handful of
# distances is noise. Measured on the tests' learning sample (16-21 per category): ROC-AUC 0.561 normalised
# against 0.583 raw.
MIN_COHORT_SIZE = 32
# A cohort's spread below this is treated as this: a scene equally far from every cohort product says
# nothing about scale, and a division by ~0 would make its probabilities 0 or 1.
MIN_COHORT_SPREAD = 1e-6


class CalibrationError(ArtifactError):
    """A calibration file that is missing, unreadable, or made for another checkpoint."""


def _check(d, y, w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, y = np.asarray(d, dtype=float), np.asarray(y, dtype=float)
    w = np.ones(len(d)) if w is None else np.asarray(w, dtype=float)
    if not (d.shape == y.shape == w.shape) or d.ndim != 1 or d.size == 0:
        raise ValueError(f"distances, labels and weights must be non-empty vectors of one length, got "
                         f"{d.shape}, {y.shape} and {w.shape}")
    if (w < 0).any() or not np.isfinite(d).all():
        raise ValueError("weights must be >= 0 and distances finite")
    return d, y, w


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))   # = 1 / (1 + exp(-z)), without overflow


@dataclass(frozen=True)
class Platt:
    """p(completes | d) = sigmoid(a * d + b); "completes" when p >= threshold."""

    a: float
    b: float
    threshold: float = 0.5

    def probability(self, d) -> np.ndarray:
        return _sigmoid(self.a * np.asarray(d, dtype=float) + self.b)

    def decide(self, d) -> np.ndarray:
        return self.probability(d) >= self.threshold

    @property
    def distance_threshold(self) -> float:
        """The distance where the probability crosses the threshold (a product completes the look at or
        below it when a < 0)."""
        t = min(max(self.threshold, 1e-12), 1 - 1e-12)
        return float((np.log(t / (1 - t)) - self.b) / self.a) if self.a != 0 else float("nan")

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "threshold": self.threshold, "distance_threshold": self.distance_threshold}

    @classmethod
    def from_dict(cls, data: dict) -> Platt:
        return cls(float(data["a"]), float(data["b"]), float(data["threshold"]))


def fit_platt(d, y, w=None, *, iterations: int = 100, ridge: float = 1e-6) -> Platt:
    """Weighted maximum-likelihood (a, b) of p = sigmoid(a d + b) for labels y in {0, 1}.

    Newton's method on the standardised distance with step halving; a tiny ridge on the slope keeps
    it finite when the classes separate. At the optimum (ridge aside) the weighted residuals sum to
    zero and are uncorrelated with d: sum w (p - y) = sum w (p - y) d = 0. The slope is held at a <= 0
    (a nearer product is never less likely to complete the look): where the unconstrained fit rises
    with d, the constrained optimum is a = 0.
    """
    d, y, w = _check(d, y, w)
    mu, sd = float(np.average(d, weights=w)), float(np.sqrt(np.average((d - np.average(d, weights=w)) ** 2, weights=w)))
    sd = sd if sd > 0 else 1.0
    x = (d - mu) / sd
    X = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.zeros(2)

    def loss(t):
        z = X @ t
        return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * ridge * t[0] ** 2)

    current = loss(theta)
    for _ in range(iterations):
        p = _sigmoid(X @ theta)
        grad = X.T @ (w * (p - y)) + np.array([ridge * theta[0], 0.0])
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag([ridge, 1e-12])
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            trial = theta - scale * step
            value = loss(trial)
            if value <= current:
                break
            scale /= 2
        if scale <= 1e-6:
            break
        converged = abs(current - value) <= 1e-12 * max(1.0, abs(current))
        theta, current = trial, value
        if converged:
            break
    a = theta[0] / sd
    if a > 0:
        # A probability that rises with the distance says the distance ranks backwards on these samples;
        # the likelihood's best with a <= 0 (it is concave) is then a = 0: the weighted base rate everywhere.
        rate = min(max(float(np.average(y, weights=w)), 1e-12), 1 - 1e-12)
        return Platt(0.0, float(np.log(rate / (1 - rate))))
    return Platt(float(a), float(theta[1] - a * mu))


def draw_cohort(products_by_category: dict[str, list[str]], *, size: int = COHORT_SIZE,
                seed: int = 0) -> dict[str, tuple[str, ...]]:
    """Up to `size` product ids of each category, drawn without replacement, in a seeded order that does not
    depend on the order they were listed in (sorted first): the same products for the same inputs."""
    if size < 1:
        raise ValueError(f"a cohort needs at least 1 product per category, got size {size}")
    rng = np.random.default_rng(seed)
    out = {}
    for category in sorted(products_by_category):
        ids = sorted(set(products_by_category[category]))
        if ids:
            pick = rng.choice(len(ids), size=min(size, len(ids)), replace=False)
            out[category] = tuple(ids[i] for i in sorted(pick))
    return out


def cohort_normalise(d, cohort_d) -> np.ndarray:
    """(d - mean(cohort_d)) / std(cohort_d) along the last axis: d is ... x n (one scene's distances to n
    products of one category), cohort_d is ... x M (the same scene's distances to that category's cohort)."""
    d, cohort_d = np.asarray(d, dtype=float), np.asarray(cohort_d, dtype=float)
    if cohort_d.shape[-1] < 1 or d.shape[:-1] != cohort_d.shape[:-1]:
        raise ValueError(f"d (... x n) and cohort_d (... x M, M >= 1) must agree on the leading axes, got "
                         f"{d.shape} and {cohort_d.shape}")
    mean = cohort_d.mean(axis=-1, keepdims=True)
    spread = np.maximum(cohort_d.std(axis=-1, keepdims=True), MIN_COHORT_SPREAD)
    return (d - mean) / spread


@dataclass(frozen=True)
class Cohort:
    """Per category, the cohort's product ids and their embeddings (M x d float32, rows in the ids' order)."""

    product_ids: dict[str, tuple[str, ...]]
    vectors: dict[str, np.ndarray]

    def __post_init__(self):
        if set(self.product_ids) != set(self.vectors):
            raise ValueError("a cohort needs ids and vectors for the same categories")
        for name, ids in self.product_ids.items():
            v = self.vectors[name]
            if v.ndim != 2 or v.shape[0] != len(ids) or not len(ids):
                raise ValueError(f"cohort of {name!r}: {len(ids)} ids but vectors of shape {v.shape}")

    @property
    def categories(self) -> list[str]:
        return sorted(self.product_ids)

    def to_dict(self) -> dict:
        # float32 little-endian, base64: 128 products x 8 categories x d = 128 is 0.7 MB as JSON numbers
        return {name: {"product_ids": list(self.product_ids[name]), "shape": list(self.vectors[name].shape),
                       "vectors_f32le_base64": base64.b64encode(
                           np.ascontiguousarray(self.vectors[name], dtype="<f4").tobytes()).decode("ascii")}
                for name in self.categories}

    @classmethod
    def from_dict(cls, data: dict) -> Cohort:
        ids, vectors = {}, {}
        for name, entry in data.items():
            raw = base64.b64decode(entry["vectors_f32le_base64"], validate=True)
            vectors[name] = np.frombuffer(raw, dtype="<f4").reshape([int(n) for n in entry["shape"]]).astype(np.float32)
            ids[name] = tuple(str(p) for p in entry["product_ids"])
        return cls(ids, vectors)


def weighted_counts(p, y, w, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of the decision p >= threshold, counting each sample with its weight."""
    p, y, w = np.asarray(p, dtype=float), np.asarray(y, dtype=bool), np.asarray(w, dtype=float)
    yes = p >= threshold
    tp, fp, fn = w[yes & y].sum(), w[yes & ~y].sum(), w[~yes & y].sum()
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def best_f1_threshold(p, y, w=None) -> float:
    """The probability threshold (decision p >= t) with the highest weighted F1; the highest such t on ties."""
    p, y, w = _check(p, y, w)
    y = y.astype(bool)
    order = np.argsort(-p, kind="stable")
    ps, ys, ws = p[order], y[order], w[order]
    tp, fp = np.cumsum(np.where(ys, ws, 0.0)), np.cumsum(np.where(ys, 0.0, ws))
    ends = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]     # t = ps[end] says yes to everything up to end
    f1 = 2 * tp[ends] / np.maximum(tp[ends] + fp[ends] + w[y].sum(), 1e-300)
    return float(ps[ends[int(np.argmax(f1))]])     # argmax takes the first: the highest threshold of the best


def precision_threshold(p, y, *, precision: float, min_yes: int = 1, confidence_z: float = 0.0) -> float | None:
    """The lowest threshold t whose decision p >= t has precision >= `precision` while saying yes to at least
    `min_yes` samples: the most recall at that precision. None when no threshold reaches it.

    `confidence_z` > 0 asks for the precision's Wilson lower bound at z (1.0: one-sided 84 %) to reach it
    rather than the point estimate: a threshold fitted on a few dozen samples to precision exactly 0.9
    falls below it on new samples about half the time. z = 0 is the point estimate.
    """
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=bool)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"p and y must be vectors of one length, got {p.shape} and {y.shape}")
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp, said = np.cumsum(ys), np.arange(1, len(ps) + 1)
    ends = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1] if len(ps) else np.zeros(0, dtype=int)
    bound = wilson_lower_bound(tp[ends], said[ends], confidence_z)
    ok = ends[(bound >= precision - 1e-12) & (said[ends] >= min_yes)]
    return float(ps[ok[-1]]) if len(ok) else None


def wilson_lower_bound(successes, trials, z: float) -> np.ndarray:
    """The Wilson score interval's lower end for a rate of successes / trials (trials > 0); z = 0 gives the rate."""
    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    rate, z2 = k / n, z * z
    centre = rate + z2 / (2 * n)
    spread = z * np.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    return (centre - spread) / (1 + z2 / n)


def reliability(p, y, w=None, *, bins: int = BINS) -> list[dict]:
    """Per equal-width probability bin: its range, weight share, mean predicted probability and observed rate."""
    p, y, w = _check(p, y, w)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = w.sum()
    out = []
    for b in range(bins):
        inside = which == b
        wb = w[inside].sum()
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "share": float(wb / total) if total > 0 else 0.0,
                    "predicted": float(np.average(p[inside], weights=w[inside])) if wb > 0 else None,
                    "observed": float(np.average(y[inside], weights=w[inside])) if wb > 0 else None})
    return out


def expected_calibration_error(p, y, w=None, *, bins: int = BINS) -> float:
    """sum over bins of (bin weight share) * |observed rate - mean predicted probability|."""
    return float(sum(b["share"] * abs(b["observed"] - b["predicted"])
                     for b in reliability(p, y, w, bins=bins) if b["share"] > 0))


# -- the run's file ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibrations:
    """One Platt calibration per distance (hybrid, global, local), tied to the checkpoint they were fitted for.

    With a `cohort` each Platt takes the cohort-normalised distance (cohort_normalise), without one (files
    written before cohorts) the raw distance.
    """

    checkpoint_sha256: str
    methods: dict[str, Platt]
    info: dict   # how they were fitted (split, samples, threshold rule), and validation figures
    cohort: Cohort | None = None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        body = {"format": FORMAT, "checkpoint_sha256": self.checkpoint_sha256,
                "methods": {m: c.to_dict() for m, c in self.methods.items()}, **self.info}
        if self.cohort is not None:
            body["cohort"] = self.cohort.to_dict()
        write_json_atomic(path, body)
        return path


def load_calibrations(path: str | os.PathLike, *, checkpoint_sha256: str | None = None) -> Calibrations:
    """Read calibration.json; CalibrationError when missing, unreadable or fitted for another checkpoint."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"no calibration at {path}; `ctl train` or `ctl evaluate` writes it") from None
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path} is not a readable calibration file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        raise CalibrationError(f"{path} is not a {FORMAT} file")
    if checkpoint_sha256 is not None and data.get("checkpoint_sha256") != checkpoint_sha256:
        raise CalibrationError(f"{path} was fitted for checkpoint sha256 {data.get('checkpoint_sha256')}, not "
                               f"{checkpoint_sha256}; rerun `ctl evaluate` on the run to refit it")
    try:
        methods = {m: Platt.from_dict(c) for m, c in data["methods"].items()}
    except (KeyError, TypeError, ValueError):
        raise CalibrationError(f"{path}: malformed calibration entries") from None
    try:
        cohort = Cohort.from_dict(data["cohort"]) if data.get("cohort") is not None else None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CalibrationError(f"{path}: malformed cohort (ids, shape and vectors must agree)") from None
    info = {k: v for k, v in data.items() if k not in ("format", "checkpoint_sha256", "methods", "cohort")}
    return Calibrations(str(data.get("checkpoint_sha256")), methods, info, cohort)
