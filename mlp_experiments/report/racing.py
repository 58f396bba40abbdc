"""Seed racing: seeds are handed out in rounds to the variants still in contention, and a
variant stops getting seeds once the data decide it.

    settings = RaceSettings()                       # check() names what is wrong with bad ones
    state = decide(scores, settings, maximize=True) # scores: variant -> {seed: score}
    state.verdicts["sgd"].status                    # "leader", "racing", "beaten" or "same"
    state.finished, state.next_seeds, state.next_look

The race. Seeds are handed out in increasing order, the same seeds to every variant: all
variants run the first `min_seeds`, then each variant still in contention (the leader and the
"racing" ones) runs `seeds_per_round` more per round. After each round there is a look. The
leader is the variant in contention with the best mean on the look's seeds; each other one is
judged against it, paired over the seeds the two share (a seed fixes the data order and the
initial weights):

- "same": the paired TOST puts the mean difference inside +-margin at the look's level. It wins
  over "beaten": a difference shown to be smaller than the margin is practically irrelevant
  even where it is also statistically real.
- "beaten": the paired t-test says the leader is better, Holm-adjusted, at the look's level,
  and (before the last look) the estimated gap is at least the margin. A significant gap
  estimated inside the margin races on: more seeds would likely show it practically the same,
  the verdict that wins. (Eliminated at once, 12% of the variants of the benchmark's
  "within" comparisons were "beaten" where the full budget calls them "same".) At the last look
  significance alone decides, as in a fixed design, which is the race's rules on one look.
- "racing": neither yet; `seeds_needed` says about how many shared seeds would decide it.

"beaten" and "same" variants leave the race and keep the seeds they ran. A "beaten" verdict is
final (that variant is worse than one in contention). A "same" verdict holds against the leader
it was reached with: when the lead changes, the new leader judges it again on its seeds, and a
variant no longer decided rejoins the race (its next round brings it up to `next_look` seeds,
filling the seeds it skipped). The race is finished when no variant is "racing", or after the
`max_seeds` look. `decide` is a pure function of the scores: it replays the race look by look,
so calling it after every round or once on every seed's scores gives the same state; scores a
variant got after it left the race, or after the race ended, are not used.

Error control of "beats" (the claim that must stay rare: <= alpha family-wise, race included):
- Across looks: alpha spending (Lan & DeMets) with the power function alpha * t^2 (Kim &
  DeMets), t = seeds / max_seeds. The looks' levels are exact for the paired t-test on normal
  differences (`nominal_levels`), not a union bound, which would spend alpha several times
  over on looks that share most of their seeds. t^2 spends little early: at 4-8 seeds (3-7
  degrees of freedom) only gross differences are decided, while the last look keeps half of
  alpha (0.023 at 30 seeds), so a race that runs to `max_seeds` mostly reaches the fixed
  design's verdicts. In benchmarks/racing.py Pocock-type spending (front-loaded) used 43% of
  the fixed design's seed-runs instead of 46% but agreed with its verdicts on 95.0% of the
  variants instead of 97.4%, its last look testing at 0.009.
- Within a look: Holm over ALL pairs of the variants not beaten, not only leader-vs-other. The
  leader is chosen by the same data, so its contrasts are the largest pairwise gaps: Holm
  over the k - 1 contrasts with the observed best makes about 9% false "beats" among 6 equal
  variants, Holm over the k(k - 1)/2 pairs 5%. A variant that left as "same" keeps its pairs
  in the family, as in Holm a hypothesis that was not rejected keeps its share of alpha.
- "same" takes each one-sided test at the look's level, so a false "same" (a true difference
  of at least the margin) is about as rare per contrast as a fixed design's TOST at alpha
  makes it; it is not corrected across contrasts.

Degenerate data. A NaN score (a diverged run) counts as the worst finite score of the look: the
most pessimistic value seen rather than an invented one. Differences that are the same on
every seed (no spread) are exact and need no test: no difference is "same" whatever the margin
(the same computation); a constant one is "same" within the margin and "beaten" beyond it. A
pair with fewer than 2 shared seeds is not judged and stays "racing".

A fixed design's equivalence verdict: `equivalent(a, b, margin, alpha)`, the paired TOST.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import special

from mlp_experiments.report.stats import ALPHA, Contrast, best_first, holm, summarise

POWER = 0.8  # of the follow-up comparison `seeds_needed` sizes
LEVEL_PATHS = 200_000  # simulated races behind the looks' levels: alpha to +-0.0005


@dataclass(frozen=True)
class RaceSettings:
    # Below 4 seeds a paired t-test has 2 degrees of freedom, and at the first looks' levels
    # (about 0.001) its critical t passes 30: a look there could decide nothing. From 3 to 5
    # it changed nothing in the benchmark: early looks decide only gross differences.
    min_seeds: int = 4
    # The cost cap. A "same" needs about 11 (s / margin)^2 seeds with the looks' levels (s: the
    # sd of the paired differences); our pairs' s is 0.1-1.3 points, 0.4 typically, so 30
    # seeds settle pairs up to s = 0.8 points. The benchmark's races use 46% of the cap.
    max_seeds: int = 30
    alpha: float = 0.05  # the family-wise rate of false "beats" over the whole race
    # Practical equivalence in score units: half a point of accuracy. Our seed sds of test
    # accuracy are 0.2-1.2 points, and comparisons' leading variants lie 0.1-0.5 points apart:
    # a gap under half a point is one a change of seed alone can bring, not one to choose by.
    # 0.3 points needs 2.8x the seeds ((0.5/0.3)^2): the benchmark's races then used 61% of
    # the fixed design's runs.
    # A regression task (RMSE) needs its own margin.
    margin: float = 0.005
    seeds_per_round: int = 1  # a look after every seed: a race stops as soon as it can

    def problems(self) -> list[str]:
        problems = []
        if self.min_seeds < 2:
            problems.append(f"min_seeds must be at least 2 (a paired t-test needs 2 seeds), "
                            f"got {self.min_seeds}")
        if self.max_seeds < self.min_seeds:
            problems.append(f"max_seeds ({self.max_seeds}) must be at least min_seeds "
                            f"({self.min_seeds})")
        if not 0 < self.alpha < 1:
            problems.append(f"alpha must lie strictly between 0 and 1, got {self.alpha}")
        if not self.margin >= 0:  # catches nan too
            problems.append(f"margin must be 0 or more (in score units), got {self.margin}")
        if self.seeds_per_round < 1:
            problems.append(f"seeds_per_round must be at least 1, got {self.seeds_per_round}")
        return problems

    def check(self) -> RaceSettings:
        """The settings, or a ValueError that names every problem."""
        problems = self.problems()
        if problems:
            raise ValueError("bad race settings: " + "; ".join(problems))
        return self

    def looks(self) -> list[int]:
        """The seed counts after which the race decides: min_seeds, every seeds_per_round
        more, and max_seeds last."""
        return [*range(self.min_seeds, self.max_seeds, self.seeds_per_round), self.max_seeds]


def spent(fraction: float, alpha: float) -> float:
    """The part of alpha spent once this fraction of max_seeds has been seen."""
    return alpha * fraction**2


@functools.lru_cache
def nominal_levels(looks: tuple[int, ...], alpha: float) -> tuple[float, ...]:
    """The two-sided level of the paired t-test at each look (given by its seed count) such
    that, with no true difference, the test rejects by look k with probability
    spent(n_k / n_last). With normal differences the looks' t-statistics have a joint law free
    of the unknown sd, so one simulation of it serves every race: look k's critical |t| is the
    one that the spending's increment of the paths not rejected yet exceed."""
    rng = np.random.default_rng(0)
    sums, squares = np.zeros(LEVEL_PATHS), np.zeros(LEVEL_PATHS)
    not_rejected = np.ones(LEVEL_PATHS, dtype=bool)
    levels, previous = [], 0
    for n in looks:
        new = rng.standard_normal((LEVEL_PATHS, n - previous))  # differences since the last look
        sums, squares = sums + new.sum(axis=1), squares + (new**2).sum(axis=1)
        t = np.abs(sums / n) / np.sqrt((squares - sums**2 / n) / (n - 1) / n)
        increment = spent(n / looks[-1], alpha) - spent(previous / looks[-1], alpha)
        if levels:
            critical = np.sort(t[not_rejected])[-round(increment * LEVEL_PATHS) - 1]
        else:  # the first look's p-value is uniform: its level is its spending, exactly
            critical = special.stdtrit(n - 1, 1 - increment / 2)
        levels.append(float(2 * special.stdtr(n - 1, -critical)))
        not_rejected &= t <= critical
        previous = n
    return tuple(levels)


def look_levels(settings: RaceSettings) -> dict[int, float]:
    """Each look's seed count and the level its tests use."""
    looks = settings.looks()
    return dict(zip(looks, nominal_levels(tuple(looks), settings.alpha), strict=True))


def without_nan(scores: dict[str, dict], maximize: bool) -> dict[str, dict]:
    """NaN scores (diverged runs) replaced by the worst finite score among them all."""
    finite = [v for by_seed in scores.values() for v in by_seed.values() if not math.isnan(v)]
    if not finite:
        return scores
    worst = min(finite) if maximize else max(finite)
    return {name: {seed: worst if math.isnan(v) else v for seed, v in by_seed.items()}
            for name, by_seed in scores.items()}


def differences(a: dict, b: dict) -> np.ndarray:
    """a − b on each seed the two share."""
    return np.array([a[s] - b[s] for s in a.keys() & b.keys()])


def exact(d: np.ndarray) -> bool:
    """Every seed moved by the same amount (to rounding): the difference needs no test."""
    return bool(np.ptp(d) < 1e-12)


@dataclass(frozen=True)
class Equivalence:
    """The paired TOST of a − b against +-margin: p is the larger of the two one-sided
    p-values; the two are practically the same at `level` where p < level."""

    seeds: int
    difference: float  # mean of a − b over the shared seeds
    sd: float  # of the per-seed differences (ddof=1); 0 where they are exact
    p: float
    margin: float
    level: float

    @property
    def same(self) -> bool:
        return self.p < self.level


def equivalent(a: dict, b: dict, margin: float, alpha: float = ALPHA,
               maximize: bool = True) -> Equivalence | None:
    """Whether two variants' scores (seed -> score) are practically the same: the paired TOST
    at `alpha` over their shared seeds, i.e. whether the 1 − 2 alpha interval of the mean of
    a − b lies inside +-margin. A NaN score counts as the worst of the two variants' scores
    (`without_nan`). Differences with no spread are exact: "same" when there is none (the same
    computation, whatever the margin) or it is within the margin. None below 2 shared seeds."""
    clean = without_nan({"a": a, "b": b}, maximize)
    d = differences(clean["a"], clean["b"])
    if len(d) < 2:
        return None
    difference = float(d.mean())
    if exact(d):
        same = abs(difference) < 1e-12 or abs(difference) < margin
        return Equivalence(len(d), difference, 0.0, 0.0 if same else 1.0, margin, alpha)
    sd = float(d.std(ddof=1))
    error, df = sd / math.sqrt(len(d)), len(d) - 1
    above_lower = special.stdtr(df, -(difference + margin) / error)  # H0: difference <= -margin
    below_upper = special.stdtr(df, (difference - margin) / error)  # H0: difference >= margin
    return Equivalence(len(d), difference, sd, float(max(above_lower, below_upper)), margin,
                       alpha)


def paired_contrast(a: dict, b: dict) -> Contrast | None:
    """`stats.compare`'s paired t-test of a − b on the seeds they share (tests/test_racing.py
    checks that the two agree), without scipy's per-call overhead, which a race replayed look by
    look on every pair would pay thousands of times in the benchmark, and with the exact answer
    where every seed moved by the same amount (p = 0; 1 for no difference). None below 2 shared
    seeds."""
    d = differences(a, b)
    if len(d) < 2:
        return None
    difference, seeds = float(d.mean()), f"{len(d)} seeds"
    if exact(d):
        p = 0.0 if abs(difference) > 1e-12 else 1.0
        return Contrast("paired t-test", seeds, difference, difference, difference, p)
    error, df = float(d.std(ddof=1)) / math.sqrt(len(d)), len(d) - 1
    half_width = special.stdtrit(df, 1 - ALPHA / 2) * error
    p = float(2 * special.stdtr(df, -abs(difference) / error))
    return Contrast("paired t-test", seeds, difference, difference - half_width,
                    difference + half_width, p)


def seeds_needed(difference: float, sd: float, margin: float,
                 alpha: float = ALPHA) -> int | None:
    """About how many shared seeds a follow-up fixed comparison of the two variants needs to
    decide them with power 0.8, taking the observed mean d and sd s of the per-seed
    differences as the truth (normal approximation plus Guenther's small-sample term):

        differ: n = (z(1 − alpha/2) + z(0.8))^2 (s / |d|)^2 + z(1 − alpha/2)^2 / 2
        same:   n = (z(1 − alpha) + z(0.8))^2 (s / (margin − |d|))^2 + z(1 − alpha)^2 / 2,

    the second only where |d| < margin; the smaller of the two, rounded up. None where there
    is no spread, or neither can be reached (no difference and no margin)."""
    if not sd > 0:
        return None
    z = NormalDist().inv_cdf
    candidates = []
    if abs(difference) > 0:
        candidates.append((z(1 - alpha / 2) + z(POWER)) ** 2 * (sd / difference) ** 2
                          + z(1 - alpha / 2) ** 2 / 2)
    if abs(difference) < margin:
        candidates.append((z(1 - alpha) + z(POWER)) ** 2 * (sd / (margin - abs(difference))) ** 2
                          + z(1 - alpha) ** 2 / 2)
    return math.ceil(min(candidates)) if candidates else None


@dataclass(frozen=True)
class Verdict:
    """One variant's place in the race.

    status: "leader", "racing", "beaten" or "same". seeds: how many of the race's seeds it has
    run (for one that left, up to its last look). against: the leader it was judged against
    (for "beaten", the one that beat it). contrast: that leader minus this variant, the paired
    t-test with its p Holm-adjusted over the look's family; equivalence: the TOST of the same
    pair; level: the look's level both were judged at. seeds_needed ("racing" only): the
    `seeds_needed` estimate of the shared seeds a follow-up comparison of the pair needs."""

    status: str
    seeds: int
    against: str | None = None
    contrast: Contrast | None = None
    equivalence: Equivalence | None = None
    level: float = math.nan
    seeds_needed: int | None = None


@dataclass(frozen=True)
class RaceState:
    """The race after its last look: every variant's verdict; `look` the seed count of that
    look (0 before the first); `finished`; and, unless finished, the variants that run the
    next round (`next_seeds`) and the seed count that round brings each of them to
    (`next_look`): the seeds of the sweep's sequence they have not run below it."""

    verdicts: dict[str, Verdict]
    look: int
    finished: bool
    next_seeds: tuple[str, ...]
    next_look: int | None

    @property
    def leader(self) -> str | None:
        return next((n for n, v in self.verdicts.items() if v.status == "leader"), None)


def all_pairs_holm(scores: dict[str, dict]) -> dict[tuple[str, str], Contrast]:
    """The paired contrast of every pair (first minus second, in the order of `scores`), with
    its p-value Holm-adjusted over all of them."""
    names = list(scores)
    contrasts = {(a, b): paired_contrast(scores[a], scores[b])
                 for i, a in enumerate(names) for b in names[i + 1:]}
    judged = {pair: c for pair, c in contrasts.items() if c is not None}
    return dict(zip(judged, holm(list(judged.values())), strict=True))


def judge(leader: str, others: list[str], family: list[str], scores: dict[str, dict],
          settings: RaceSettings, level: float, last_look: bool,
          maximize: bool) -> dict[str, Verdict]:
    """Each of `others` against the leader at one look, Holm over all pairs of `family`."""
    contrasts = all_pairs_holm({leader: scores[leader]} | {n: scores[n] for n in family})
    verdicts = {}
    for name in others:
        contrast = contrasts.get((leader, name))
        equivalence = equivalent(scores[leader], scores[name], settings.margin, level)
        leader_better = contrast is not None and (contrast.difference > 0) == maximize
        if equivalence is not None and equivalence.same:
            status = "same"
        elif leader_better and contrast.adjusted_p < level and (
                last_look or abs(contrast.difference) >= settings.margin):
            status = "beaten"
        else:
            status = "racing"
        needed = (seeds_needed(equivalence.difference, equivalence.sd, settings.margin,
                               settings.alpha)
                  if status == "racing" and equivalence is not None else None)
        verdicts[name] = Verdict(status, len(scores[name]), leader, contrast, equivalence,
                                 level, needed)
    return verdicts


def decide(scores: dict[str, dict[int, float]], settings: RaceSettings = RaceSettings(),
           maximize: bool = True) -> RaceState:
    """The race so far, replayed look by look from each variant's scores (seed -> score, NaN
    for a diverged run; seeds handed out in increasing order); see the module docstring.
    maximize: whether a higher score is better. Raises ValueError for bad settings."""
    settings.check()
    seeds = sorted(set().union(*scores.values()))
    verdicts = {name: Verdict("racing", len(by_seed)) for name, by_seed in scores.items()}
    left_at: dict[str, int] = {}  # the look at which a variant left the race
    looks = {n: level for n, level in look_levels(settings).items() if n <= len(seeds)}
    look = 0
    for look, level in looks.items():
        seen = without_nan({name: {s: by_seed[s] for s in seeds[:left_at.get(name, look)]
                                   if s in by_seed}
                            for name, by_seed in scores.items()}, maximize)
        contending = [n for n in scores if n not in left_at]
        means = {n: summarise(list(seen[n].values())).mean for n in contending}
        leader = best_first(contending, means.get, maximize)[0]
        # A "same" verdict holds against its leader: a new leader judges it again.
        stale = [n for n in left_at if verdicts[n].status == "same"
                 and verdicts[n].against != leader]
        others = [n for n in contending if n != leader] + stale
        verdicts[leader] = Verdict("leader", len(seen[leader]))
        # Holm's family: a variant out as "same" keeps its pairs, as a hypothesis that was not
        # rejected keeps its share of alpha.
        family = [n for n in scores if verdicts[n].status != "beaten"]
        verdicts |= judge(leader, others, family, seen, settings, level,
                          look == settings.max_seeds, maximize)
        for name in others:
            if verdicts[name].status == "racing":
                left_at.pop(name, None)
            else:
                left_at.setdefault(name, look)
        if look == settings.max_seeds or all(v.status != "racing" for v in verdicts.values()):
            return RaceState(verdicts, look, True, (), None)
    upcoming = [n for n in settings.looks() if n > look]
    return RaceState(verdicts, look, False, tuple(n for n in scores if n not in left_at),
                     upcoming[0])
