"""Paired bootstrap confidence intervals over evaluation items, for the promotion gate.

Every model is scored on the same items, so the gain of a candidate over a reference is
measured item by item and resampled in pairs (scipy.stats.bootstrap, `paired=True`): the
interval says how far the gain could move on another draw of equally hard questions. With
a few dozen items, differences of a few ROUGE-L points sit inside it; a gate that reads
the lower bound therefore never promotes a candidate that only looks better by chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95  # two-sided: the lower bound is the 2.5th percentile of the resampled gain
RESAMPLES = 2000
SEED = 13  # fixed, so the same scores always give the same verdict


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    items: int
    confidence: float = CONFIDENCE

    def text(self, signed: bool = True, percent: bool = False) -> str:
        fmt = (lambda v: f"{v:+.1%}") if percent else (lambda v: f"{v:+.3f}" if signed else f"{v:.3f}")
        return f"{fmt(self.estimate)} [{self.confidence:.0%} CI {fmt(self.low)}, {fmt(self.high)}; n={self.items}]"


def _unknown(estimate: float, items: int) -> Interval:
    # Fail closed: too few items to resample means the gain could be anything.
    return Interval(estimate, -math.inf, math.inf, items)


def _check(candidate: Sequence[float], reference: Sequence[float]) -> None:
    if len(candidate) != len(reference):
        raise ValueError(f"paired scores differ in length: {len(candidate)} vs {len(reference)} items")


def mean_gain(
    candidate: Sequence[float], reference: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """Mean of `candidate - reference` over paired items, with a percentile bootstrap interval."""
    import numpy as np
    from scipy.stats import bootstrap

    _check(candidate, reference)
    diff = np.asarray(candidate, dtype=float) - np.asarray(reference, dtype=float)
    if diff.size < 2:
        return _unknown(float(diff.mean()) if diff.size else math.nan, int(diff.size))
    if np.all(diff == diff[0]):  # no spread: every resample gives the same mean
        return Interval(float(diff[0]), float(diff[0]), float(diff[0]), int(diff.size))
    result = bootstrap(
        (diff,),
        np.mean,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Interval(float(diff.mean()), float(ci.low), float(ci.high), int(diff.size))


def ratio_rise(
    candidate: Sequence[float], reference: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """Relative rise `sum(candidate) / sum(reference) - 1` over paired items (e.g. per-text losses)."""
    import numpy as np
    from scipy.stats import bootstrap

    _check(candidate, reference)
    c, r = np.asarray(candidate, dtype=float), np.asarray(reference, dtype=float)
    estimate = float(c.sum() / r.sum() - 1) if c.size else math.nan
    if c.size < 2:
        return _unknown(estimate, int(c.size))

    def rise(c: np.ndarray, r: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(c, axis=axis) / np.sum(r, axis=axis) - 1

    if np.allclose(c / r, c[0] / r[0]):  # every text rose by the same share
        return Interval(estimate, estimate, estimate, int(c.size))
    result = bootstrap(
        (c, r),
        rise,
        paired=True,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), int(c.size))
