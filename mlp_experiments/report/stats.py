"""The statistics of a comparison: each variant's mean with its 95% confidence interval, and
the tests that say whether two variants differ beyond the seed-to-seed noise, with the size of
the difference and a correction for testing several contrasts at once."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # for a report's whole family of contrasts (Holm); intervals are 95%


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan below 2 values
    ci95: float  # half-width of the Student-t 95% confidence interval; nan below 2 values


def summarise(values: list[float]) -> Summary:
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Summary(n, mean, math.nan, math.nan)
    std = float(values.std(ddof=1))
    return Summary(n, mean, std, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)))


@dataclass(frozen=True)
class Contrast:
    """Two variants' per-seed scores compared: the test used and over how many seeds, the
    difference of their means (first minus second) with its 95% t-interval, the p-value, and
    the p-value adjusted for the report's family of contrasts (`holm`)."""

    test: str  # "paired t-test" or "Welch's t-test"
    seeds: str  # "5 seeds", "5 and 4 seeds"
    difference: float
    low: float
    high: float
    p: float
    adjusted_p: float = math.nan

    @property
    def real(self) -> bool:
        """A difference beyond the seed-to-seed noise, at ALPHA for the whole family."""
        return self.adjusted_p < ALPHA


def compare(a: dict, b: dict) -> Contrast | None:
    """Compare two variants' scores, each keyed by its seed. Where the seeds of one are all
    among the other's, the paired t-test over those seeds (a seed fixes the data order and, for
    the same network, the initial weights, so the two runs of a seed share that noise);
    otherwise Welch's t-test. None when it cannot be judged: fewer than 2 values (pairs) on a
    side, or no spread at all."""
    common = sorted(set(a) & set(b), key=str)
    if len(common) >= 2 and len(common) == min(len(a), len(b)):
        x, y = np.array([a[s] for s in common]), np.array([b[s] for s in common])
        if np.ptp(x - y) < 1e-12:  # every seed moved by the same amount (to rounding)
            return None
        result, seeds = stats.ttest_rel(x, y), f"{len(common)} seeds"
        test = "paired t-test"
    else:
        x, y = np.array(list(a.values())), np.array(list(b.values()))
        if min(len(x), len(y)) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
            return None
        result = stats.ttest_ind(x, y, equal_var=False)
        seeds = f"{len(x)} seeds each" if len(x) == len(y) else f"{len(x)} and {len(y)} seeds"
        test = "Welch's t-test"
    interval = result.confidence_interval(1 - ALPHA)
    return Contrast(test, seeds, float(x.mean() - y.mean()), float(interval.low),
                    float(interval.high), float(result.pvalue))


def holm(contrasts: list[Contrast]) -> list[Contrast]:
    """The contrasts with Holm's step-down adjusted p-values: the i-th smallest of m p-values
    times (m - i + 1), made monotone, at most 1. Rejecting where the adjusted p < ALPHA keeps
    the chance of any false rejection in the family at ALPHA."""
    order = sorted(range(len(contrasts)), key=lambda i: contrasts[i].p)
    adjusted, running = [math.nan] * len(contrasts), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(contrasts) - rank) * contrasts[index].p))
        adjusted[index] = running
    return [dataclasses.replace(c, adjusted_p=p) for c, p in zip(contrasts, adjusted, strict=True)]


def best_first(items: list, value, maximize: bool) -> list:
    """The items sorted by value(item), best first, nan last."""

    def key(item) -> tuple[bool, float]:
        v = value(item)
        return math.isnan(v), -v if maximize else v

    return sorted(items, key=key)
