"""The statistics of a comparison: each variant's mean with its 95% confidence interval, and
the tests that say whether two variants differ beyond the seed-to-seed noise, with the size of
the difference and a correction for testing several contrasts at once. An interval is cut to
the values its quantity can take (a mean accuracy lies in [0, 1], a difference of two in
[-1, 1]): what is cut holds no possible value, so the interval covers the true one as often,
and two seeds' t-interval (t = 12.7) no longer reads as an accuracy of -0.23 to 2.05."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # for a report's whole family of contrasts (Holm); intervals are 95%


UNBOUNDED = (-math.inf, math.inf)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan below 2 values
    low: float  # the Student-t 95% confidence interval of the mean; nan below 2 values
    high: float


def summarise(values: list[float], bounds: tuple[float, float] = UNBOUNDED) -> Summary:
    """n, mean, std and the mean's 95% interval, within `bounds` (what a value can be)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(values.std(ddof=1))
    half_width = t_975(n) * std / math.sqrt(n)
    return Summary(n, mean, std, *cut(mean - half_width, mean + half_width, bounds))


def t_975(n: int) -> float:
    """Student's t 97.5% quantile for the mean of n values: a 95% interval is mean ± t·s/√n."""
    return float(stats.t.ppf(0.975, n - 1))


def cut(low: float, high: float, bounds: tuple[float, float]) -> tuple[float, float]:
    return max(low, bounds[0]), min(high, bounds[1])


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


def compare(a: dict, b: dict, bounds: tuple[float, float] = UNBOUNDED) -> Contrast | None:
    """Compare two variants' scores (each within `bounds`), each keyed by its seed. Where the
    seeds of one are all among the other's, the paired t-test over those seeds (a seed fixes
    the data order and, for the same network, the initial weights, so the two runs of a seed
    share that noise); otherwise Welch's t-test. None when it cannot be judged: fewer than 2
    values (pairs) on a side, or no spread at all."""
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
    widest = (bounds[0] - bounds[1], bounds[1] - bounds[0])
    return Contrast(test, seeds, float(x.mean() - y.mean()),
                    *cut(float(interval.low), float(interval.high), widest), float(result.pvalue))


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
