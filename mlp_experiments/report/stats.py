"""The statistics of a comparison: each variant's mean with its 95% confidence interval, and
the test that says whether two variants differ beyond the seed-to-seed noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # significance level of the Welch t-tests


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


def within_noise(a: list[float], b: list[float]) -> tuple[bool | None, float]:
    """(True when Welch's t-test finds no difference at the 5% level, its p-value), or
    (None, nan) when it cannot be judged: fewer than 2 values on a side, or no spread at all."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if min(len(a), len(b)) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None, math.nan
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    if not math.isfinite(p):
        return None, math.nan
    return p >= ALPHA, p


def best_first(items: list, value, maximize: bool) -> list:
    """The items sorted by value(item), best first, nan last."""

    def key(item) -> tuple[bool, float]:
        v = value(item)
        return math.isnan(v), -v if maximize else v

    return sorted(items, key=key)
