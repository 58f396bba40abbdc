import base64
import math
import re
from pathlib import Path

import mlflow
import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats as scipy_stats

from mlp_experiments.report import command, stats, trials
from mlp_experiments.report.cost import cost_lines
from mlp_experiments.report.markdown import (
    comparison_summary,
    importances_section,
    interval,
    write_report,
)
from mlp_experiments.sweep.presets import write_best_preset
from mlp_experiments.sweep.spec import SweepConfig, load_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975_DF2 = 4.302653  # Student's t 97.5% quantile, 2 degrees of freedom

optuna.logging.set_verbosity(optuna.logging.WARNING)


def history(val: list[float], test_final: float) -> list[dict[str, float]]:
    """One record per epoch as the engine writes it; test accuracy rises to test_final."""
    epochs = len(val)
    return [
        {"train_loss": 1.0 / epoch, "train_acc": v, "val_loss": 1.0 / epoch, "val_acc": v,
         "test_loss": 1.0 / epoch, "test_acc": test_final - 0.01 * (epochs - epoch),
         "lr": 0.1, "epoch_time_s": 1.0, "samples_per_s": 1000.0}
        for epoch, v in enumerate(val, start=1)
    ]


def add(study, state=TrialState.COMPLETE, value=None, params=None, distributions=None,
        hist=None, **user_attrs):
    hist = hist or []
    study.add_trial(create_trial(
        state=state, value=value, params=params or {}, distributions=distributions or {},
        user_attrs={"history": hist, **user_attrs},
        intermediate_values={e: m["val_acc"] for e, m in enumerate(hist, start=1)},
    ))


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------------------- statistics


def test_summarise_known_values():
    summary = stats.summarise([0.80, 0.82, 0.84])
    assert summary.n == 3
    assert summary.mean == pytest.approx(0.82)
    assert summary.std == pytest.approx(0.02)
    half_width = T_975_DF2 * 0.02 / math.sqrt(3)
    assert (summary.low, summary.high) == pytest.approx((0.82 - half_width, 0.82 + half_width))


def test_an_interval_holds_only_values_the_score_can_take():
    """Two seeds' t-interval (t = 12.71) of an accuracy spans -2.77 to 4.22: cut to [0, 1];
    a difference of two accuracies to [-1, 1]. Inside the bounds nothing changes."""
    wide = stats.summarise([0.45, 1.0], bounds=(0.0, 1.0))
    assert (wide.low, wide.high) == (0.0, 1.0)
    assert interval(wide) == "[0.0000, 1.0000]"
    narrow = stats.summarise([0.80, 0.82, 0.84], bounds=(0.0, 1.0))
    assert (narrow.low, narrow.high) == (stats.summarise([0.80, 0.82, 0.84]).low,
                                         stats.summarise([0.80, 0.82, 0.84]).high)
    a, b = {0: 0.2, 1: 0.9}, {0: 0.1, 1: 0.3}
    unbounded, bounded = stats.compare(a, b), stats.compare(a, b, bounds=(0.0, 1.0))
    assert unbounded.low < -1 and unbounded.high > 1
    assert (bounded.low, bounded.high) == (-1.0, 1.0)
    assert (bounded.difference, bounded.p) == (unbounded.difference, unbounded.p)
    assert stats.compare(a, b, bounds=(0.0, math.inf)).low == unbounded.low  # an RMSE's


def test_summarise_one_value_has_no_interval():
    summary = stats.summarise([0.9])
    assert (summary.n, summary.mean) == (1, 0.9)
    assert math.isnan(summary.std) and math.isnan(summary.low) and math.isnan(summary.high)
    assert interval(summary) == "undefined (n = 1)"


def test_variants_run_on_the_same_seeds_get_the_paired_test_of_the_closed_form():
    a, b = {0: 0.86, 1: 0.88, 2: 0.83, 3: 0.87}, {0: 0.84, 1: 0.85, 2: 0.82, 3: 0.84}
    differences = [0.02, 0.03, 0.01, 0.03]
    mean = sum(differences) / 4
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3) / 2
    contrast = stats.compare(a, b)
    assert (contrast.test, contrast.seeds) == ("paired t-test", "4 seeds")
    assert contrast.difference == pytest.approx(mean)
    assert contrast.p == pytest.approx(2 * scipy_stats.t.sf(mean / se, 3), rel=1e-9)
    half = scipy_stats.t.ppf(0.975, 3) * se
    assert (contrast.low, contrast.high) == pytest.approx((mean - half, mean + half))
    # The same numbers unpaired: Welch's test cannot see that every seed moved together.
    unpaired = stats.compare(a, {f"trial {seed}": value for seed, value in b.items()})
    assert unpaired.test == "Welch's t-test" and unpaired.p > 5 * contrast.p


def test_variants_of_different_seeds_get_welchs_test_of_the_closed_form():
    contrast = stats.compare({0: 0.80, 1: 0.82}, {"trial 5": 0.70, "trial 6": 0.72})
    # Equal sizes and variances: Welch's df is 2, where the t CDF is 1/2 + t / (2 sqrt(2 + t^2)).
    se = math.sqrt(0.0002 / 2 + 0.0002 / 2)
    t = 0.10 / se
    assert (contrast.test, contrast.seeds) == ("Welch's t-test", "2 seeds each")
    assert contrast.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert (contrast.low, contrast.high) == pytest.approx((0.10 - T_975_DF2 * se,
                                                           0.10 + T_975_DF2 * se))


def test_holm_multiplies_the_ith_smallest_p_value_by_m_minus_i_plus_1_step_down():
    family = [stats.Contrast("paired t-test", "5 seeds", 0, 0, 0, p)
              for p in (0.01, 0.04, 0.03, 0.005, 0.6)]
    adjusted = [c.adjusted_p for c in stats.holm(family)]
    # sorted: 0.005*5, 0.01*4, 0.03*3, max(0.04*2, 0.09), min(1, 0.6*1) -> monotone
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.6])
    assert [c.real for c in stats.holm(family)] == [True, False, False, True, False]


@pytest.mark.parametrize(("a", "b"), [({0: 0.8}, {0: 0.7, 1: 0.75}),
                                      ({0: 0.8, 1: 0.8}, {"t1": 0.7, "t2": 0.7}),
                                      ({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.8})],
                         ids=["one-seed", "no-spread", "pairs-that-moved-as-one"])
def test_a_contrast_without_two_values_or_any_spread_cannot_be_judged(a, b):
    assert stats.compare(a, b) is None


def test_mean_curve_averages_the_runs_that_reached_each_epoch():
    epochs, mean, std = trials.mean_curve(
        [[{"v": 1.0}, {"v": 3.0}], [{"v": 3.0}, {"v": 5.0}, {"v": 7.0}]], "v")
    assert list(epochs) == [1, 2, 3]
    assert list(mean) == pytest.approx([2.0, 4.0, 7.0])
    assert list(std) == pytest.approx([math.sqrt(2), math.sqrt(2), 0.0])


# ---------------------------------------------------------------------------- comparison

VARIANTS = {  # variant -> (best val acc, final test acc) per seed
    "adam": ([0.87, 0.88, 0.89], [0.85, 0.86, 0.87]),
    "rmsprop": ([0.86, 0.87, 0.88], [0.845, 0.858, 0.862]),
    "sgd": ([0.80, 0.81, 0.82], [0.78, 0.795, 0.795]),
}


def comparison_study():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("kind", "comparison")
    study.set_user_attr("metric", "val_acc")
    distributions = {"variant": CategoricalDistribution(list(VARIANTS)),
                     "trainer.seed": IntDistribution(0, 9)}
    for name in ("sgd", "rmsprop", "adam"):  # not in the expected order
        for seed, (val, test) in enumerate(zip(*VARIANTS[name], strict=True)):
            add(study, value=val, params={"variant": name, "trainer.seed": seed},
                distributions=distributions, hist=history([val - 0.02, val - 0.01, val], test),
                outcome="completed")
    add(study, TrialState.PRUNED, params={"variant": "sgd", "trainer.seed": 3},
        distributions=distributions, hist=history([0.5], 0.5), outcome="pruned")
    add(study, TrialState.FAIL, params={"variant": "rmsprop", "trainer.seed": 3},
        distributions=distributions, outcome="error")
    add(study, value=0.87, params={"variant": "adam", "trainer.seed": 0},
        distributions=distributions, hist=history([0.85, 0.86, 0.87], 0.85),
        outcome="completed", reused_from=6)
    # Diverged after a good epoch: Optuna records it COMPLETE with a finite best value.
    add(study, value=0.95, params={"variant": "sgd", "trainer.seed": 4},
        distributions=distributions, hist=history([0.95, 0.1], 0.1), outcome="diverged")
    return study


def comparison_sweep():
    return OmegaConf.merge(OmegaConf.structured(SweepConfig), {
        "study_name": "compare_optimizers", "variants": {n: [f"optimizer={n}"] for n in VARIANTS},
        "space": {"trainer.seed": "range(0,3)"}, "sampler": "grid",
    })


def table_row(markdown: str, variant: str) -> list[str]:
    (line,) = [line for line in markdown.splitlines() if line.startswith(f"| `{variant}` |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_comparison_report(tmp_path):
    path = write_report(comparison_study(), comparison_sweep(), tmp_path)
    markdown = path.read_text()

    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["adam", "rmsprop", "sgd"]
    adam, rmsprop, sgd = (table_row(markdown, name) for name in ("adam", "rmsprop", "sgd"))
    # variant, seeds, test mean, std, CI, objective mean, std, CI, pruned, failed, diverged
    assert adam[1:4] == ["3", "0.8600", "0.0100"]
    assert adam[5] == "0.8800"
    ci = T_975_DF2 * 0.01 / math.sqrt(3)
    assert adam[4] == f"[{0.86 - ci:.4f}, {0.86 + ci:.4f}]"
    assert sgd[1:3] == ["3", "0.7900"]  # the diverged seed is left out of the statistics
    assert sgd[8:] == ["1", "0", "1"]
    assert rmsprop[8:] == ["0", "1", "0"]
    assert "13 trials: 10 complete, 1 pruned, 1 failed, 1 diverged." in markdown
    assert "1 trial(s) reused an identical earlier configuration: counted once." in markdown

    # Seeds 0-2 on each side: paired tests, adam against the 2 others as one family (Holm).
    rmsprop_p = scipy_stats.ttest_rel([0.85, 0.86, 0.87], [0.845, 0.858, 0.862]).pvalue
    sgd = scipy_stats.ttest_rel([0.85, 0.86, 0.87], [0.78, 0.795, 0.795])
    low, high = sgd.confidence_interval()
    assert sgd.pvalue * 2 < 0.05 < rmsprop_p  # Holm: the smaller p times 2, the larger times 1
    assert ("`adam` and `rmsprop` are within noise of each other (`adam` − `rmsprop` = +0.5 "
            "points of test accuracy, 95% CI") in markdown
    assert (f"paired t-test over 3 seeds, p = {rmsprop_p:.2g}, Holm-adjusted p = "
            f"{rmsprop_p:.2g})") in markdown
    assert (f"`adam` beats `sgd` (`adam` − `sgd` = +7.0 points of test accuracy, 95% CI "
            f"{100 * low:+.1f} to {100 * high:+.1f}; paired t-test over 3 seeds, "
            f"p = {sgd.pvalue:.2g}, Holm-adjusted p = {2 * sgd.pvalue:.2g}).") in markdown
    assert "The 2 contrasts are one family: Holm's step-down correction" in markdown
    for name in ("test_score.png", "learning_curves.png"):
        assert f"]({name})" in markdown
        assert_png(tmp_path / name)

    # The same report as one HTML file for MLflow's artifact view: its figures inside it.
    html = (tmp_path / "report.html").read_text()
    assert "<table>" in html and "<td><code>adam</code></td>" in html
    images = re.findall(r'<img src="([^"]*)"', html)
    assert len(images) == 2 and all(i.startswith("data:image/png;base64,") for i in images)
    embedded = base64.b64decode(images[0].split(",", 1)[1])
    assert embedded == (tmp_path / "test_score.png").read_bytes()


def test_comparison_with_one_seed_cannot_be_judged(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("kind", "comparison")
    distributions = {"variant": CategoricalDistribution(["a", "b"])}
    for name, value in (("a", 0.9), ("b", 0.8)):
        add(study, value=value, params={"variant": name}, distributions=distributions,
            hist=history([value], value), outcome="completed")
    markdown = write_report(study, comparison_sweep(), tmp_path).read_text()
    assert "`a` against `b` cannot be judged" in markdown
    assert "(1 seed each)" in markdown
    assert "undefined (n = 1)" in markdown


def comparison_terminal_summary(scores_by_variant: dict[str, tuple[float, ...]]) -> str:
    """What `mlp-sweep` prints of a comparison whose variants scored these, seed by seed."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("kind", "comparison")
    distributions = {"variant": CategoricalDistribution(list(scores_by_variant)),
                     "trainer.seed": IntDistribution(0, 9)}
    for name, scores in scores_by_variant.items():
        for seed, score in enumerate(scores):
            add(study, value=score, params={"variant": name, "trainer.seed": seed},
                distributions=distributions, hist=history([score], score), outcome="completed")
    return "\n".join(comparison_summary(study, comparison_sweep()))


def test_two_seeds_apart_get_the_whole_range_as_their_interval_not_an_impossible_one():
    """The quickstart's comparison (2 seeds): a variant at 0.45 and 1.0 has the t-interval
    [-2.77, 4.22], printed as [0, 1]; its difference to another as -100 to +100 points; and
    the summary says how wide 2 seeds' intervals are, and what narrows them."""
    summary = comparison_terminal_summary({"a": (0.45, 1.0), "b": (0.1, 0.3)})
    assert "a: test accuracy 0.7250, 95% CI [0.0000, 1.0000], 2 seeds" in summary
    assert "b: test accuracy 0.2000, 95% CI [0.0000, 1.0000], 2 seeds" in summary
    assert "a − b = +52.5 points of test accuracy, 95% CI -100.0 to +100.0" in summary
    assert ("2 seeds: a 95% interval spans ±12.7 standard errors (Student's t), so only large "
            "gaps show; sweep.seeds=5 narrows it to ±2.8.") in summary
    five_seeds = comparison_terminal_summary({"a": (0.81, 0.82, 0.83, 0.84, 0.85),
                                              "b": (0.80, 0.82, 0.81, 0.83, 0.84)})
    assert "over 5 seeds" in five_seeds and "standard errors" not in five_seeds


def test_a_gap_that_passes_its_own_test_but_not_holms_is_not_called_noise():
    """a - b: paired p = 0.038 on its own, 0.077 after Holm over the two contrasts; its 95%
    interval (not adjusted) excludes 0. Not "within noise": not shown to differ."""
    summary = comparison_terminal_summary({"a": (0.850, 0.860, 0.855, 0.865, 0.858),
                                           "b": (0.840, 0.852, 0.855, 0.850, 0.853),
                                           "c": (0.852, 0.850, 0.860, 0.862, 0.850)})
    assert ("a and b are not shown to differ: the gap passes its own test but not Holm's "
            "correction for the report's other contrasts (a − b = +0.8 points of test accuracy, "
            "95% CI +0.1 to +1.5; paired t-test over 5 seeds, p = 0.038, Holm-adjusted "
            "p = 0.077).") in summary
    assert "a and c are within noise of each other" in summary


def test_variants_that_score_the_same_on_every_seed_are_said_to_be_the_same(tmp_path):
    """Log-softmax + NLL is cross-entropy: the same numbers on every seed, nothing to test."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("kind", "comparison")
    distributions = {"variant": CategoricalDistribution(["ce", "nll"]),
                     "trainer.seed": IntDistribution(0, 9)}
    for name in ("ce", "nll"):
        for seed, value in enumerate((0.84, 0.85, 0.83)):
            add(study, value=value, params={"variant": name, "trainer.seed": seed},
                distributions=distributions, hist=history([value], value), outcome="completed")
    markdown = write_report(study, comparison_sweep(), tmp_path).read_text()
    assert ("`ce` and `nll` score the same on every seed (3), every metric at every epoch: the "
            "same computation, nothing to test.") in markdown


def test_a_tie_on_every_seed_from_different_trainings_is_not_called_the_same_computation():
    """Adam and RMSprop can land on the same test accuracy on every seed of a small test set;
    their training losses differ, so the tie is a tie, not one computation run twice."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("kind", "comparison")
    distributions = {"variant": CategoricalDistribution(["adam", "rmsprop"]),
                     "trainer.seed": IntDistribution(0, 9)}
    for name, loss_shift in (("adam", 0.0), ("rmsprop", 1e-6)):
        for seed, value in enumerate((0.84, 0.85)):
            runs = history([value], value)
            runs[-1]["train_loss"] += loss_shift
            add(study, value=value, params={"variant": name, "trainer.seed": seed},
                distributions=distributions, hist=runs, outcome="completed")
    summary = "\n".join(comparison_summary(study, comparison_sweep()))
    assert ("adam and rmsprop score the same on every seed (2) but train differently (a loss "
            "or score differs at some epoch): a tie, with no spread to test; more seeds would "
            "show whether it holds.") in summary
    assert "same computation" not in summary


def test_variants_both_perfect_on_every_seed_are_not_called_the_same_computation():
    """Adam and RMSprop at accuracy 1.0 on an easy synthetic set: equal scores at the end of
    the scale say nothing about the computation."""
    summary = comparison_terminal_summary({"adam": (1.0, 1.0), "rmsprop": (1.0, 1.0)})
    assert ("adam and rmsprop both score 1.0000 on every seed (2), the end of the scale: this "
            "test set cannot tell them apart.") in summary
    assert "same computation" not in summary


def test_comparison_that_minimises_puts_the_lowest_first(tmp_path):
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("kind", "comparison")
    distributions = {"variant": CategoricalDistribution(["high", "low"]),
                     "trainer.seed": IntDistribution(0, 9)}
    for name, value in (("high", 0.9), ("low", 0.3)):
        for seed in range(2):
            add(study, value=value + seed / 100, params={"variant": name, "trainer.seed": seed},
                distributions=distributions, hist=history([0.5], 0.5), outcome="completed")
    markdown = write_report(study, comparison_sweep(), tmp_path).read_text()
    assert markdown.index("| `low` |") < markdown.index("| `high` |")
    assert "lowest first" in markdown


def test_regression_comparison_judges_by_lower_rmse(tmp_path):
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("kind", "comparison")
    study.set_user_attr("metric", "val_rmse")
    distributions = {"variant": CategoricalDistribution(["big", "small"]),
                     "trainer.seed": IntDistribution(0, 9)}
    for name, base in (("big", 2.0), ("small", 1.0)):
        for seed in range(3):
            rmse = base + seed / 10 + (0.05 if (name, seed) == ("big", 1) else 0)
            study.add_trial(create_trial(
                value=rmse, params={"variant": name, "trainer.seed": seed},
                distributions=distributions, user_attrs={"outcome": "completed", "history": [
                    {"val_rmse": rmse, "val_mae": rmse, "test_rmse": rmse, "test_mae": rmse}]}))
    markdown = write_report(study, comparison_sweep(), tmp_path).read_text()
    assert markdown.index("| `small` |") < markdown.index("| `big` |")
    assert "| test RMSE |" in markdown
    assert "`small` beats `big` (`small` − `big` = -1.02 in test RMSE, 95% CI" in markdown
    assert_png(tmp_path / "learning_curves.png")


# ---------------------------------------------------------------------------- search

SEARCH_DISTRIBUTIONS = {
    "optimizer.lr": FloatDistribution(0.01, 1.0, log=True),
    "model.dropout": FloatDistribution(0.0, 0.5),
    "model.hidden_sizes": CategoricalDistribution(["[256]", "[512,256]"]),
}


def search_study(values=(0.81, 0.86, 0.79, 0.90, 0.84, 0.83), name=None, storage=None):
    study = optuna.create_study(direction="maximize", study_name=name, storage=storage)
    study.set_user_attr("kind", "search")
    study.set_user_attr("metric", "val_acc")
    for index, value in enumerate(values):
        params = {"optimizer.lr": 0.01 * 2**index, "model.dropout": 0.05 * index,
                  "model.hidden_sizes": ["[256]", "[512,256]"][index % 2]}
        overrides = ["data=synthetic", "tracking.plots=false", "tracking.uri=sqlite:///t.db",
                     *(f"{k}={v}" for k, v in params.items())]
        add(study, value=value, params=params, distributions=SEARCH_DISTRIBUTIONS,
            hist=history([value - 0.01, value], value - 0.02), outcome="completed",
            overrides=overrides, cpu_s=30.0)
    add(study, TrialState.PRUNED, params={"optimizer.lr": 0.5, "model.dropout": 0.1,
                                          "model.hidden_sizes": "[256]"},
        distributions=SEARCH_DISTRIBUTIONS, hist=history([0.3, 0.4], 0.4), outcome="pruned")
    return study


def test_search_report(tmp_path):
    sweep = load_sweep("search_mlp", ["study_name=pytest_search_report"])
    markdown = write_report(search_study(), sweep, tmp_path).read_text()
    lines = markdown.splitlines()
    top = lines.index("## Top 6 trials")
    assert lines[top + 2].startswith("| rank | trial | val_acc |")
    assert lines[top + 4].startswith("| 1 | 3 | 0.9000 | 0.15 | [512,256] | 0.08 |")
    assert lines[top + 4].endswith("| 0.8800 |")  # test accuracy of its last epoch
    assert lines[top + 9].startswith("| 6 | 2 | 0.7900 |")
    assert "7 trials: 6 complete, 1 pruned." in markdown
    # The pruned trial recorded no CPU time (trials before cpu_s was recorded did not either).
    assert lines[-1] == "7 trials, 14 epochs, 3 CPU-minutes (over the 6 trials that recorded it)."
    # the overrides that decide the result; where it records is the user's
    assert ("uv run mlp-train data=synthetic optimizer.lr=0.08 "
            "model.dropout=0.15000000000000002 'model.hidden_sizes=[512,256]'\n") in markdown
    assert "0.8800 (measured after the search, not used to choose it)" in markdown

    importance_rows = [line for line in lines if line.startswith("| `")]
    assert {row.split("`")[1] for row in importance_rows} == set(SEARCH_DISTRIBUTIONS)
    assert "](importances.png)" in markdown
    for name in ("history.png", "importances.png"):
        assert_png(tmp_path / name)
    assert not (tmp_path / "slices.png").exists()  # only in the MLflow summary


def test_a_detailed_search_report_of_one_trial_prints_no_warnings(tmp_path, recwarn):
    """Every parameter took one value: Optuna's plots of it warn through matplotlib, which
    widens the axis. A sweep's summary printed those warnings among its own lines."""
    sweep = load_sweep("search_mlp", ["study_name=pytest_search_one_trial"])
    write_report(search_study(values=(0.8,)), sweep, tmp_path, detailed=True)
    assert_png(tmp_path / "slices.png")
    assert [str(warning.message) for warning in recwarn] == []


def test_search_report_marks_reuse_and_warns_about_a_diverged_preset(tmp_path, tmp_sweep):
    study = search_study()
    best = study.trials[3]
    add(study, value=best.value, params=best.params, distributions=SEARCH_DISTRIBUTIONS,
        hist=best.user_attrs["history"], outcome="completed", reused_from=3,
        overrides=best.user_attrs["overrides"])
    add(study, value=0.95, params=best.params, distributions=SEARCH_DISTRIBUTIONS,
        hist=history([0.95, 0.1], 0.1), outcome="diverged", overrides=["optimizer.lr=1.0"])
    write_best_preset(study, tmp_sweep)  # from Optuna's best trial: the diverged one
    markdown = write_report(study, tmp_sweep, tmp_path).read_text()
    assert "| 1 | 3 | 0.9000 |" in markdown and "| 2 | 7 (reuses 3) | 0.9000 |" in markdown
    # The reused trial trained nothing: 8 trials; the diverged one recorded no CPU time.
    assert markdown.splitlines()[-1] == ("8 trials, 16 epochs, 3 CPU-minutes (over the 6 "
                                         "trials that recorded it).")
    assert ("The same configuration as a preset: `uv run mlp-train "
            "-cd outputs/presets experiment=best/pytest_tmp_study`.") in markdown
    assert "Optuna's best trial 8, which diverged" in markdown


def test_search_report_explains_missing_importances(tmp_path):
    sweep = load_sweep("search_mlp", ["study_name=pytest_search_report"])
    markdown = write_report(search_study(values=(0.8,)), sweep, tmp_path).read_text()
    assert ("No parameter importances: they need at least 2 completed trials; this study has 1."
            in markdown)
    assert not (tmp_path / "importances.png").exists()
    assert_png(tmp_path / "history.png")


def test_importances_leave_out_a_parameter_that_never_changed(tmp_path):
    study = optuna.create_study(direction="maximize")
    distributions = {"optimizer.lr": FloatDistribution(0.01, 1.0),
                     "model.dropout": FloatDistribution(0.0, 0.5)}
    for index in range(4):
        add(study, value=0.8 + index / 100, distributions=distributions,
            params={"optimizer.lr": 0.1 * (index + 1), "model.dropout": 0.2},
            hist=history([0.8], 0.8), outcome="completed", overrides=[])
    lines = importances_section(study, "val_acc", tmp_path)
    assert "| `optimizer.lr` | 1.000 |" in lines
    assert "Left out (one value only): `model.dropout`." in lines


def test_search_without_completed_trials(tmp_path):
    sweep = load_sweep("search_mlp", ["study_name=pytest_search_report"])
    markdown = write_report(search_study(values=()), sweep, tmp_path).read_text()
    assert "1 trials: 1 pruned." in markdown
    assert "No trial completed" in markdown


# ---------------------------------------------------------------------------- the command


def test_cli_missing_storage_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        command.main(["sweep=search_mlp", f"sweep.storage=sqlite:///{tmp_path}/none.db"])
    message = str(raised.value)
    assert message.startswith("error: No study 'search_mlp'")
    assert "mlp-sweep sweep=search_mlp" in message
    assert not (tmp_path / "none.db").exists()


def test_cli_study_missing_from_an_existing_storage(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="another_study", storage=storage)
    with pytest.raises(SystemExit, match="mlp-sweep sweep=search_mlp"):
        command.main(["sweep=search_mlp", f"sweep.storage={storage}"])


@pytest.fixture
def parent_run(tracking_uri, request, tmp_path):
    """A terminated run in a local MLflow store, like the sweep's parent run."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.create_experiment(
        f"report-{request.node.name}", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id)
    return client, run_id


def test_cli_writes_the_report_and_logs_it(tmp_path, tracking_uri, parent_run, capsys):
    client, run_id = parent_run
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = search_study(name="pytest_cli_study", storage=storage)
    study.set_user_attr("mlflow_parent_run_id", run_id)
    command.main(["sweep=search_mlp", "sweep.study_name=pytest_cli_study",
                 f"sweep.storage={storage}", f"report.out_dir={tmp_path / 'docs'}",
                 f"tracking.uri={tracking_uri}"])
    path = tmp_path / "docs" / "pytest_cli_study" / "report.md"
    assert capsys.readouterr().out.splitlines()[0] == str(path)
    assert "# Study `pytest_cli_study`" in path.read_text()
    assert_png(path.parent / "history.png")
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.md", "report/history.png", "report/importances.png"} <= logged


def test_cli_writes_under_the_working_directory_by_default(workdir):
    storage = f"sqlite:///{workdir}/optuna.db"
    search_study(name="pytest_cli_study", storage=storage)
    command.main(["sweep=search_mlp", "sweep.study_name=pytest_cli_study",
                 f"sweep.storage={storage}", "tracking=none"])
    assert (workdir / "outputs" / "reports" / "pytest_cli_study" / "report.md").is_file()


def test_cli_skips_mlflow_when_tracking_is_off(tmp_path, parent_run, capsys):
    client, run_id = parent_run
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = search_study(name="pytest_cli_study", storage=storage)
    study.set_user_attr("mlflow_parent_run_id", run_id)
    command.main(["sweep=search_mlp", "sweep.study_name=pytest_cli_study",
                 f"sweep.storage={storage}", f"report.out_dir={tmp_path}", "tracking=none"])
    assert (tmp_path / "pytest_cli_study" / "report.md").is_file()
    assert client.list_artifacts(run_id) == []
    assert "logged to MLflow" not in capsys.readouterr().out


# ---------------------------------------------------------------------------- MLflow summary


@pytest.fixture
def tmp_sweep(workdir):
    """The search_mlp sweep as pytest_tmp_study, run in a temporary working directory (where
    its best preset goes)."""
    return load_sweep("search_mlp", ["study_name=pytest_tmp_study"])


def test_summarise_in_mlflow(tmp_path, tracking_uri, parent_run, tmp_sweep):
    client, run_id = parent_run
    study = search_study()
    tracking_cfg = OmegaConf.create({"uri": tracking_uri})
    preset = write_best_preset(study, tmp_sweep)
    command.summarise_in_mlflow(study, tmp_sweep, tracking_cfg, run_id, preset)

    assert {a.path for a in client.list_artifacts(run_id)} == {
        "report", "trials.csv", "best_config.yaml"}
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {f"report/{name}" for name in ("report.md", "history.png", "importances.png",
                                          "parallel_coordinates.png", "slices.png")} <= logged
    assert client.get_run(run_id).data.metrics["best_val_acc"] == pytest.approx(0.90)

    def download(path: str) -> str:
        return Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text()

    logged_preset = download("best_config.yaml")
    assert "Best trial (3) of the study pytest_tmp_study" in logged_preset
    assert "lr: 0.08" in logged_preset
    assert logged_preset == preset.read_text()
    assert "-cd outputs/presets experiment=best/pytest_tmp_study`" in download("report/report.md")
    csv = download("trials.csv")
    assert csv.count("\n") == 1 + 7 and "history" not in csv


def test_summarise_in_mlflow_without_completed_trials(tracking_uri, parent_run, tmp_sweep):
    client, run_id = parent_run
    command.summarise_in_mlflow(search_study(values=()), tmp_sweep,
                               OmegaConf.create({"uri": tracking_uri}), run_id)
    assert {a.path for a in client.list_artifacts(run_id)} == {"report", "trials.csv"}
    assert client.get_run(run_id).data.metrics == {}


def test_a_tuned_comparison_costs_its_tuning_and_its_evaluation_together():
    tuning = {"sgd": search_study(), "adam": None}  # adam's tuning study not created yet
    evaluation = optuna.create_study(direction="maximize")
    variants = {"variant": CategoricalDistribution(["sgd", "adam"])}
    for variant, cpu_s in (("sgd", 60.0), ("sgd", 60.0), ("adam", 30.0)):
        add(evaluation, value=0.8, params={"variant": variant}, distributions=variants,
            hist=history([0.8] * 3, 0.8), outcome="completed", cpu_s=cpu_s)
    add(evaluation, TrialState.RUNNING, hist=history([0.8], 0.8))  # not ended: not counted
    # For scale: 5 seeds x 3 epochs per variant, at 20 s (sgd) and 10 s (adam) an epoch.
    assert cost_lines(evaluation, tuning) == [
        "## Cost", "",
        "- tuning: 7 trials, 14 epochs, 3 CPU-minutes (over the 6 trials that recorded it)",
        "- evaluation: 3 trials, 9 epochs, 2.5 CPU-minutes",
        "- in all: 10 trials, 23 epochs, 5.5 CPU-minutes (over the 9 trials that recorded it)",
        "- for scale, the same variants at one setting on 5 fixed seeds: 10 trials, 30 epochs, "
        "7.5 CPU-minutes (estimated: their epochs at the CPU time per epoch measured here); "
        "this comparison cost 0.73 times that"]
