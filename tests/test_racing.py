"""Seed racing (mlp_experiments/report/racing.py) on fabricated per-seed scores whose answers
are worked by hand in the comments: t = mean(d) / (sd(d) / sqrt(n)) on n - 1 degrees of
freedom for the paired differences d, p-values from Student's t."""

import dataclasses
import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mlp_experiments.report import racing, stats
from mlp_experiments.report.racing import RaceSettings, decide, equivalent, seeds_needed

# Looks at 4, 5, 6, 7 and 8 seeds. The first look's level is its alpha spending exactly:
# 0.05 * (4 / 8)^2 = 0.0125.
SMALL = RaceSettings(min_seeds=4, max_seeds=8, margin=0.005)
FIRST_LEVEL = 0.0125
A = [0.860, 0.850, 0.870, 0.860]


def by_seed(values: list[float]) -> dict[int, float]:
    return dict(enumerate(values))


def minus(values: list[float], gaps: list[float]) -> dict[int, float]:
    return by_seed([v - g for v, g in zip(values, gaps, strict=True)])


def first_seeds(scores: dict[str, dict], n: int) -> dict[str, dict]:
    """The scores of seeds 0 to n - 1: the race as it stood n seeds in."""
    return {name: {s: v for s, v in by.items() if s < n} for name, by in scores.items()}


def t_p(t: float, df: int) -> float:
    """The two-sided p-value of a t statistic."""
    return 2 * scipy_stats.t.sf(abs(t), df)


def load_benchmark():
    path = Path(__file__).parents[1] / "benchmarks" / "racing.py"
    spec = importlib.util.spec_from_file_location("racing_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- the race


def test_a_clearly_worse_variant_leaves_after_min_seeds():
    # A − B = 0.030, 0.032, 0.028, 0.030: mean 0.030, sd 0.001633, se 0.000816,
    # t = 36.74 on 3 df, p = 4.43e-5. A − C = 0.004, -0.002, 0.004, -0.002: mean 0.001,
    # t = 0.58, p = 0.60. B − C: mean -0.029, sd 0.00476, t = -12.18, p = 0.0012.
    # Holm over the 3 pairs: A − B has the smallest p, adjusted 3 * 4.43e-5 = 1.33e-4 < 0.0125,
    # and its gap 0.030 is beyond the margin: B is beaten at the first look.
    scores = {"A": by_seed(A), "B": minus(A, [0.030, 0.032, 0.028, 0.030]),
              "C": minus(A, [0.004, -0.002, 0.004, -0.002])}
    state = decide(scores, SMALL)
    beaten = state.verdicts["B"]
    assert (beaten.status, beaten.against, beaten.seeds) == ("beaten", "A", 4)
    assert beaten.contrast.difference == pytest.approx(0.030)
    assert beaten.contrast.p == pytest.approx(t_p(36.742, 3), rel=1e-3)
    assert beaten.contrast.adjusted_p == pytest.approx(3 * beaten.contrast.p)
    assert beaten.level == pytest.approx(FIRST_LEVEL)
    assert state.verdicts["A"].status == "leader" and state.leader == "A"
    # C is undecided: see test_an_undecided_pair_says_how_many_seeds_it_needs.
    assert state.verdicts["C"].status == "racing"
    assert not state.finished
    assert (state.look, state.next_seeds, state.next_look) == (4, ("A", "C"), 5)


def test_an_undecided_pair_says_how_many_seeds_it_needs():
    # A − C = 0.004, -0.002, 0.004, -0.002: mean d = 0.001, sd s = 0.003464 (se 0.001732).
    # Not beaten (p = 0.60); TOST: (0.001 − 0.005) / 0.001732 = -2.31, p = 0.052 > 0.0125.
    # Seeds needed, z(0.95) = 1.6449, z(0.975) = 1.9600, z(0.8) = 0.8416:
    #   differ: (1.9600 + 0.8416)^2 (0.003464 / 0.001)^2 + 1.9600^2 / 2 = 94.19 + 1.92 = 96.1
    #   same:   (1.6449 + 0.8416)^2 (0.003464 / 0.004)^2 + 1.6449^2 / 2 = 4.64 + 1.35 = 5.99
    # the smaller, rounded up: 6.
    scores = {"A": by_seed(A), "C": minus(A, [0.004, -0.002, 0.004, -0.002])}
    racing_pair = decide(scores, SMALL).verdicts["C"]
    assert racing_pair.status == "racing"
    assert racing_pair.equivalence.p == pytest.approx(scipy_stats.t.cdf(-2.3094, 3), rel=1e-3)
    assert racing_pair.seeds_needed == 6


def test_seeds_needed_formula():
    z = scipy_stats.norm.ppf
    # d = 0.002, s = 0.004, margin 0.005: differ 7.849 * 4 + 1.921 = 33.3; same 6.183 *
    # (0.004 / 0.003)^2 + 1.353 = 12.3: 13 seeds.
    assert (z(0.95) + z(0.8)) ** 2 * (0.004 / 0.003) ** 2 + z(0.95) ** 2 / 2 == \
        pytest.approx(12.34, abs=0.01)
    assert seeds_needed(0.002, 0.004, margin=0.005) == 13
    # d = 0.006 beyond the margin: only a difference can be shown, 7.849 * (4/6)^2 + 1.921 = 5.4.
    assert seeds_needed(0.006, 0.004, margin=0.005) == 6
    assert seeds_needed(-0.006, 0.004, margin=0.005) == 6  # the sign does not matter
    assert seeds_needed(0.0, 0.004, margin=0.0) is None  # nothing can be shown
    assert seeds_needed(0.002, 0.0, margin=0.005) is None  # no spread: no estimate


def test_a_pair_within_the_margin_is_the_same_and_ends_the_race():
    # A − B = 0.001, 0.002, 0.001, 0.000: mean 0.001, sd 0.000816, se 0.000408.
    # TOST upper: (0.001 − 0.005) / 0.000408 = -9.80, p = 0.0011 < 0.0125: the same.
    scores = {"A": by_seed(A), "B": minus(A, [0.001, 0.002, 0.001, 0.000])}
    state = decide(scores, SMALL)
    same = state.verdicts["B"]
    assert (same.status, same.against) == ("same", "A")
    assert same.equivalence.p == pytest.approx(scipy_stats.t.cdf(-9.798, 3), rel=1e-3)
    assert state.finished and state.look == 4 and state.next_seeds == ()


def test_a_significant_gap_inside_the_margin_races_on_until_the_last_look():
    # A − B = 0.0045, 0.0055, 0.0035, 0.0045: mean 0.0045, sd 0.000816, t = 11.0 on 3 df,
    # p = 0.0016 < 0.0125: significant. TOST: (0.0045 − 0.005) / 0.000408 = -1.22, p = 0.15:
    # not shown the same. The gap 0.0045 is inside the margin, so before the last look B
    # races on; a single look (min_seeds = max_seeds, the fixed design) is the last: beaten.
    scores = {"A": by_seed(A), "B": minus(A, [0.0045, 0.0055, 0.0035, 0.0045])}
    early = decide(scores, SMALL).verdicts["B"]
    assert early.contrast.p == pytest.approx(t_p(11.02, 3), rel=1e-2)
    assert early.status == "racing"
    fixed = dataclasses.replace(SMALL, max_seeds=4)
    assert decide(scores, fixed).verdicts["B"].status == "beaten"


def test_max_seeds_ends_the_race_undecided():
    # A race capped at 6 seeds. A − C = 0.006, -0.004 three times: mean 0.001, sd 0.005477,
    # se 0.002236: t = 0.45 (p = 0.67), TOST (0.001 − 0.005) / 0.002236 = -1.79, p = 0.067:
    # neither at any level below alpha, and there is no seed left.
    a = [*A, 0.860, 0.850]
    scores = {"A": by_seed(a), "C": minus(a, [0.006, -0.004] * 3)}
    capped = dataclasses.replace(SMALL, max_seeds=6)
    on_five = decide(first_seeds(scores, 5), capped)
    assert (on_five.finished, on_five.next_look) == (False, 6)
    state = decide(scores, capped)
    assert state.finished and state.look == 6
    assert state.verdicts["C"].status == "racing" and state.verdicts["C"].seeds_needed
    assert (state.next_seeds, state.next_look) == ((), None)


def test_the_leader_changes_and_a_same_verdict_is_judged_again():
    # Look 4: A leads (mean 0.860 against B's 0.859). C scores as A on every seed: the same
    # computation, "same" and out of the race. A − B = 0.002, -0.002, 0.006, -0.002: mean
    # 0.001, t = 0.52, TOST p = 0.064: B races on.
    # Look 5: B's fifth seed (0.900) lifts its mean to 0.8672: B leads. C was the same as A,
    # not as B: B − C on C's 4 seeds = -0.002, 0.002, -0.006, 0.002 is undecided, so C rejoins
    # the race, and its next round fills the seed it skipped.
    a = [*A, 0.860]
    scores = {"A": by_seed(a), "B": by_seed([0.858, 0.852, 0.864, 0.862, 0.900]),
              "C": by_seed(A)}
    look_4 = decide(first_seeds(scores, 4), SMALL)
    assert look_4.leader == "A"
    assert (look_4.verdicts["C"].status, look_4.verdicts["C"].equivalence.sd) == ("same", 0.0)
    assert look_4.verdicts["B"].status == "racing"
    assert look_4.next_seeds == ("A", "B")
    look_5 = decide(scores, SMALL)
    assert look_5.leader == "B"
    assert (look_5.verdicts["A"].status, look_5.verdicts["A"].against) == ("racing", "B")
    rejoined = look_5.verdicts["C"]
    assert (rejoined.status, rejoined.against, rejoined.seeds) == ("racing", "B", 4)
    assert rejoined.contrast.difference == pytest.approx(-0.001)
    assert (look_5.next_seeds, look_5.next_look) == (("A", "B", "C"), 6)


def test_a_variant_that_left_as_the_same_keeps_its_place_in_holms_family():
    # S is A's same computation: "same" at look 4, out with its 4 seeds. At look 5 the family
    # is still A, B, S: A − B = 0.004, 0.002, 0.006, 0.002, 0.004 (mean 0.0036, sd 0.00167,
    # t = 4.81 on 4 df, p = 0.0086), B − S on S's 4 seeds (p = 0.035), A − S (exact, p = 1).
    # Holm: A − B has the smallest p of the 3 pairs, adjusted 3 * 0.0086 = 0.026.
    a = [*A, 0.860]
    scores = {"A": by_seed(a), "B": minus(a, [0.004, 0.002, 0.006, 0.002, 0.004]),
              "S": by_seed(a)}
    state = decide(scores, SMALL)
    assert (state.verdicts["S"].status, state.verdicts["S"].seeds) == ("same", 4)
    contrast = state.verdicts["B"].contrast
    assert contrast.p == pytest.approx(t_p(4.811, 4), rel=1e-3)
    assert contrast.adjusted_p == pytest.approx(3 * contrast.p)


def test_calling_decide_every_round_gives_the_replayed_race():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 0.004, 8)
    every_seed = {name: by_seed(0.85 - gap + shared + rng.normal(0, 0.003, 8))
                  for name, gap in (("A", 0.0), ("B", 0.002), ("C", 0.02))}
    scores, contending, target, rounds = {n: {} for n in every_seed}, list(every_seed), 4, 0
    while True:
        for name in contending:
            scores[name] |= {s: every_seed[name][s] for s in range(target)}
        state, rounds = decide(scores, SMALL), rounds + 1
        if state.finished:
            break
        contending, target = state.next_seeds, state.next_look
    assert rounds > 2 and state.verdicts["C"].status == "beaten"
    assert state == decide(every_seed, SMALL)


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("changes", "message"), [
    ({"min_seeds": 1}, "min_seeds must be at least 2 (a paired t-test needs 2 seeds), got 1"),
    ({"max_seeds": 3}, "max_seeds (3) must be at least min_seeds (4)"),
    ({"alpha": 0.0}, "alpha must lie strictly between 0 and 1, got 0.0"),
    ({"alpha": 1.5}, "alpha must lie strictly between 0 and 1, got 1.5"),
    ({"margin": -0.001}, "margin must be 0 or more (in score units), got -0.001"),
    ({"margin": math.nan}, "margin must be 0 or more (in score units), got nan"),
    ({"seeds_per_round": 0}, "seeds_per_round must be at least 1, got 0"),
])
def test_bad_settings_say_what_is_wrong(changes, message):
    settings = dataclasses.replace(SMALL, **changes)
    with pytest.raises(ValueError, match="bad race settings: ") as error:
        settings.check()
    assert message in str(error.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        decide({"A": by_seed(A)}, settings)


def test_every_problem_is_named_at_once_and_good_settings_pass():
    with pytest.raises(ValueError) as error:
        RaceSettings(min_seeds=1, alpha=2.0).check()
    assert "min_seeds" in str(error.value) and "alpha" in str(error.value)
    assert RaceSettings().check() == RaceSettings()


def test_looks_and_their_levels():
    assert SMALL.looks() == [4, 5, 6, 7, 8]
    assert dataclasses.replace(SMALL, seeds_per_round=3).looks() == [4, 7, 8]
    levels = racing.look_levels(SMALL)
    assert list(levels) == [4, 5, 6, 7, 8]
    assert levels[4] == pytest.approx(FIRST_LEVEL)
    # The looks share most of their seeds, so each later one may test at more than its
    # increment of the spending, 0.05 * ((n / 8)^2 − ((n − 1) / 8)^2), which a union bound
    # would give it: 0.0070, 0.0086, 0.0102, 0.0117 at 5, 6, 7, 8 seeds.
    for n in (5, 6, 7, 8):
        increment = racing.spent(n / 8, 0.05) - racing.spent((n - 1) / 8, 0.05)
        assert levels[n] > increment + 0.003
    assert all(level < 0.05 for level in levels.values())
    # A design of one look tests at alpha itself.
    assert racing.look_levels(dataclasses.replace(SMALL, min_seeds=8)) == {8: pytest.approx(0.05)}


def test_looks_spend_alpha_once_over_the_race():
    # Under no difference, a paired t-test repeated at the looks' levels rejects about alpha
    # of the time in all (20,000 normal races: 0.05 +- 0.003); at 0.05 every look it is
    # about 0.13 (the inflation the levels remove).
    levels = racing.look_levels(SMALL)
    d = np.random.default_rng(1).standard_normal((20_000, 8))
    ever = np.zeros(len(d), dtype=bool)
    naive = np.zeros(len(d), dtype=bool)
    for n, level in levels.items():
        p = scipy_stats.ttest_1samp(d[:, :n], 0, axis=1).pvalue
        ever |= p < level
        naive |= p < 0.05
    assert ever.mean() == pytest.approx(0.05, abs=0.007)
    assert naive.mean() > 0.1


# ---------------------------------------------------------------------------- equivalence


def test_equivalent_within_the_margin_and_not_beyond_it():
    five = [0.850, 0.860, 0.870, 0.880, 0.890]
    # a − b = 0.001, 0.002, 0.001, 0.000, 0.001: mean 0.001, sd 0.000707, se 0.000316.
    # TOST at 0.005: (0.001 − 0.005) / 0.000316 = -12.65 on 4 df, p = 1.12e-4: the same.
    same = equivalent(by_seed(five), minus(five, [0.001, 0.002, 0.001, 0.000, 0.001]),
                      margin=0.005)
    assert (same.seeds, same.difference, same.sd) == (5, pytest.approx(0.001),
                                                      pytest.approx(0.000707, rel=1e-3))
    assert same.p == pytest.approx(scipy_stats.t.cdf(-12.649, 4), rel=1e-3) and same.same
    # a − b = 0.007, 0.008, 0.007, 0.006, 0.007: (0.007 − 0.005) / 0.000316 = 6.32, p = 0.998.
    beyond = equivalent(by_seed(five), minus(five, [0.007, 0.008, 0.007, 0.006, 0.007]),
                        margin=0.005)
    assert beyond.p == pytest.approx(0.9984, abs=1e-4) and not beyond.same
    # The same pair with a margin of 0.01: (0.007 − 0.01) / 0.000316 = -9.49, p = 3.4e-4.
    assert equivalent(by_seed(five), minus(five, [0.007, 0.008, 0.007, 0.006, 0.007]),
                      margin=0.01).same


def test_same_wins_over_a_significant_difference_inside_the_margin():
    # The same within the margin above (TOST p = 1.1e-4), and significantly different too:
    # t = 0.001 / 0.000316 = 3.16 on 4 df, p = 0.034 < 0.05. A fixed 5-seed design (one look
    # at 0.05) calls the pair the same: a real difference too small to matter.
    five = [0.850, 0.860, 0.870, 0.880, 0.890]
    scores = {"A": by_seed(five), "B": minus(five, [0.001, 0.002, 0.001, 0.000, 0.001])}
    verdict = decide(scores, RaceSettings(min_seeds=5, max_seeds=5)).verdicts["B"]
    assert verdict.contrast.p == pytest.approx(t_p(3.1623, 4), rel=1e-3)
    assert verdict.status == "same"


def test_identical_scores_are_the_same_computation_whatever_the_margin():
    identical = equivalent(by_seed(A), by_seed(A), margin=0.0)
    assert (identical.difference, identical.sd, identical.p, identical.same) == (0, 0, 0, True)
    # Moved by the same 0.003 on every seed: exact, the same within a margin of 0.005 only.
    assert equivalent(by_seed(A), minus(A, [0.003] * 4), margin=0.005).same
    assert not equivalent(by_seed(A), minus(A, [0.003] * 4), margin=0.002).same
    state = decide({"A": by_seed(A), "copy": by_seed(A)}, SMALL)
    assert state.verdicts["copy"].status == "same" and state.finished


def test_fewer_than_two_shared_seeds_decide_nothing():
    assert equivalent({0: 0.8}, {0: 0.8, 1: 0.9}, margin=0.005) is None
    assert racing.paired_contrast({0: 0.8, 1: 0.7}, {1: 0.9, 2: 0.8}) is None
    state = decide({"A": by_seed(A), "late": {7: 0.8}}, SMALL)
    assert state.verdicts["late"].status == "racing"
    assert state.verdicts["late"].seeds_needed is None


def test_paired_contrast_is_compares_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = by_seed(rng.normal(0.85, 0.01, 6)), by_seed(rng.normal(0.84, 0.01, 6))
    ours, theirs = racing.paired_contrast(a, b), stats.compare(a, b)
    assert (ours.test, ours.seeds) == (theirs.test, theirs.seeds)
    for field in ("difference", "low", "high", "p"):
        assert getattr(ours, field) == pytest.approx(getattr(theirs, field), rel=1e-9)


# ---------------------------------------------------------------------------- NaN


def test_nan_counts_as_the_worst_score_of_the_look():
    # C trails A by exactly 0.03 on every seed: exact, beyond the margin, beaten; its 0.820 is
    # the worst score seen. B diverged on seed 1: it counts as 0.820 there, so A − B =
    # 0, 0.03, 0, 0 (mean 0.0075, sd 0.015, t = 1.0, p = 0.39): racing, where B's three other
    # seeds alone would make it A's same computation.
    scores = {"A": by_seed(A), "B": by_seed([0.860, math.nan, 0.870, 0.860]),
              "C": minus(A, [0.03] * 4)}
    state = decide(scores, SMALL)
    assert state.verdicts["C"].status == "beaten"
    diverged = state.verdicts["B"]
    assert diverged.status == "racing"
    assert diverged.contrast.difference == pytest.approx(0.0075)
    assert diverged.contrast.p == pytest.approx(t_p(1.0, 3), rel=1e-6)


def test_nan_is_the_lowest_score_or_the_highest_error():
    scores = {"a": {0: 0.2, 1: math.nan}, "b": {0: 0.5}}
    assert racing.without_nan(scores, maximize=True)["a"][1] == 0.2
    assert racing.without_nan(scores, maximize=False)["a"][1] == 0.5


def test_a_race_with_no_finite_score_stays_undecided():
    nothing = {name: by_seed([math.nan] * 8) for name in ("A", "B")}
    state = decide(nothing, SMALL)
    assert state.finished and state.look == 8
    assert {v.status for v in state.verdicts.values()} == {"leader", "racing"}


def test_lower_is_better():
    # RMSE: B is 0.030 higher (worse) on every seed, beyond the margin: beaten by A.
    errors = {"A": by_seed(A), "B": minus(A, [-0.030] * 4)}
    state = decide(errors, SMALL, maximize=False)
    assert (state.leader, state.verdicts["B"].status) == ("A", "beaten")
    assert decide(errors, SMALL, maximize=True).leader == "B"


# ---------------------------------------------------------------------------- the benchmark


def test_the_simulated_rate_of_false_beats_stays_low(monkeypatch):
    """Null comparisons only, so every "beats" is false, and no margin, so no "same" verdict
    ends a race early: the race keeps false beats rare (1,000 such races: 4.1%). With its
    error control taken away (alpha at every look, no Holm) the same 30 races make 13 false
    beats (47% of 400 such races): the bound catches such a regression."""
    benchmark = load_benchmark()
    settings = RaceSettings(max_seeds=10, margin=0.0)

    def false_beats() -> float:
        figures = benchmark.simulate(30, settings, np.random.default_rng(5), kinds=("null",))
        return figures["all"].false_beats[0]

    assert false_beats() <= 0.15
    monkeypatch.setattr(racing, "nominal_levels", lambda looks, alpha: (alpha,) * len(looks))
    monkeypatch.setattr(racing, "holm", lambda contrasts: [
        dataclasses.replace(c, adjusted_p=c.p) for c in contrasts])
    assert false_beats() > 0.15
