"""A study's report in Markdown: a comparison's variants side by side with their statistics, or
a search's top trials, parameter importances and best configuration."""

from __future__ import annotations

import math
import shlex
from collections import Counter
from pathlib import Path

import optuna
from omegaconf import DictConfig
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from mlp_experiments.config.identity import decides_the_result
from mlp_experiments.report.cost import cost_lines
from mlp_experiments.report.figures import (
    curves_figure,
    save,
    save_optuna_plot,
    score_figure,
    tuning_figure,
)
from mlp_experiments.report.html import write_html
from mlp_experiments.report.stats import (
    ALPHA,
    Contrast,
    Summary,
    best_first,
    compare,
    holm,
    t_975,
)
from mlp_experiments.report.trials import (
    Variant,
    final,
    finished,
    group_variants,
    status,
    study_kind,
    study_metric,
    task_of,
    trial_label,
    varying_params,
)
from mlp_experiments.sweep import stages
from mlp_experiments.sweep.presets import best_preset_command, best_preset_path
from mlp_experiments.task import Task, higher_is_better, metric_range

TOP_TRIALS = 10
ADVISED_SEEDS = 5  # as the shipped comparisons run: a t-test with 4 degrees of freedom


def number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def interval(summary: Summary) -> str:
    if summary.n < 2:
        return f"undefined (n = {summary.n})"
    return f"[{number(summary.low)}, {number(summary.high)}]"


def p_value(p: float) -> str:
    """`p = 0.042` or `p < 0.001`, as a sentence says it."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def param(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def status_counts(trials: list[FrozenTrial]) -> str:
    counts = Counter(status(t) for t in trials)
    return ", ".join(f"{count} {name}" for name, count in counts.most_common())


def signed(difference: float, task: Task) -> str:
    """A difference of test scores: in points of accuracy, or in RMSE."""
    return f"{100 * difference:+.1f}" if not task.regression else f"{difference:+.3g}"


def comparison_sentence(a: Variant, b: Variant, contrast: Contrast | None, task: Task) -> str:
    """`a` (the best) against `b`: which one is better, if the difference is real, by how much
    (`a`'s score minus `b`'s, with its interval), and the test that says so."""
    scores_a = a.test_by_seed(task)
    if contrast is None and scores_a == b.test_by_seed(task):
        scores = set(scores_a.values())
        if scores <= set(metric_range(task.score)):  # all perfect (or all wrong): no evidence
            return (f"`{a.name}` and `{b.name}` both score {number(scores.pop())} on every seed "
                    f"({len(a.trials)}), the end of the scale: this test set cannot tell them "
                    f"apart.")
        if a.results_by_seed() == b.results_by_seed():
            return (f"`{a.name}` and `{b.name}` score the same on every seed ({len(a.trials)}), "
                    f"every metric at every epoch: the same computation, nothing to test.")
        return (f"`{a.name}` and `{b.name}` score the same on every seed ({len(a.trials)}) but "
                f"train differently (a loss or score differs at some epoch): a tie, with no "
                f"spread to test; more seeds would show whether it holds.")
    if contrast is None:
        n_a, n_b = len(a.trials), len(b.trials)
        counts = f"{n_a} seed{'s' * (n_a != 1)} each" if n_a == n_b else f"{n_a} and {n_b} seeds"
        return (f"`{a.name}` against `{b.name}` cannot be judged: it needs at least 2 seeds on "
                f"each side and some spread between seeds ({counts}).")
    unit = "points of test accuracy" if not task.regression else "in test RMSE"
    size = (f"`{a.name}` − `{b.name}` = {signed(contrast.difference, task)} {unit}, 95% CI "
            f"{signed(contrast.low, task)} to {signed(contrast.high, task)}")
    test = (f"{contrast.test} over {contrast.seeds}, {p_value(contrast.p)}, "
            f"Holm-adjusted {p_value(contrast.adjusted_p)}")
    if not contrast.real and contrast.p < ALPHA:  # its interval excludes 0, unadjusted
        return (f"`{a.name}` and `{b.name}` are not shown to differ: the gap passes its own "
                f"test but not Holm's correction for the report's other contrasts ({size}; "
                f"{test}).")
    if not contrast.real:
        return f"`{a.name}` and `{b.name}` are within noise of each other ({size}; {test})."
    a_wins = (contrast.difference > 0) == higher_is_better(task.score)
    winner, loser = (a, b) if a_wins else (b, a)
    return f"`{winner.name}` beats `{loser.name}` ({size}; {test})."


def contrasts_with_the_best(variants: list[Variant], task: Task) -> list[Contrast | None]:
    """Each variant after the first against the first, as one family (Holm)."""
    contrasts = [compare(variants[0].test_by_seed(task), other.test_by_seed(task),
                         metric_range(task.score)) for other in variants[1:]]
    judged = holm([c for c in contrasts if c is not None])
    return [judged.pop(0) if c is not None else None for c in contrasts]


def fixed_verdicts(measured: list[Variant], task: Task) -> list[str]:
    """Every variant against the best on a fixed set of seeds."""
    contrasts = contrasts_with_the_best(measured, task)
    lines = [f"- {comparison_sentence(measured[0], other, contrast, task)}"
             for other, contrast in zip(measured[1:], contrasts, strict=True)]
    return [*lines, "", f"(Each variant against the best on the per-seed final test scores: "
            f"the paired t-test over the seeds both ran, since a seed fixes the data order and, "
            f"for the same network, the initial weights; Welch's t-test where the seeds do "
            f"not match. The {sum(c is not None for c in contrasts)} contrasts are one "
            f"family: Holm's step-down correction keeps the chance of any false \"beats\" "
            f"at 5%. Each difference's 95% interval is not adjusted.)"]


def race_verdicts(state, settings, task: Task) -> list[str]:
    """The race's verdict on each variant against the leader, as sentences."""
    leader = state.leader
    ended = (f"decided after {state.look} seeds" if state.look < settings.max_seeds
             else f"ended at max_seeds = {settings.max_seeds}")
    if not state.finished:
        ended = f"still running: last look after {state.look} seeds"
    lines = [f"The race ({ended}): `{leader}` leads."]
    for name, verdict in state.verdicts.items():
        if name != leader:
            lines.append(f"- {race_sentence(leader, name, verdict, settings, task)}")
    return [*lines, "", f"(Seeds were handed out in rounds to the variants still in "
            f"contention, from {settings.min_seeds} to at most {settings.max_seeds} each. After "
            f"each round every pair in contention was compared by a paired t-test over the "
            f"seeds both ran, Holm-corrected over the pairs, at a level that spends "
            f"alpha = {settings.alpha} over the looks (alpha spending as alpha * t^2), so the "
            f"chance of any false \"beats\" stays at {settings.alpha:.0%}; a pair whose "
            f"difference two one-sided tests place within ±{settings.margin} is practically "
            f"the same. A beaten or practically-the-same variant ran no more seeds. "
            f"benchmarks/racing.py measures these rates on simulated comparisons.)"]


def race_sentence(leader: str, name: str, verdict, settings, task: Task) -> str:
    """`name` against the leader it was judged against (an earlier leader, for a variant that
    left the race before the lead changed)."""
    leader = verdict.against or leader
    unit = "points of test accuracy" if not task.regression else "in test RMSE"
    equivalence, contrast = verdict.equivalence, verdict.contrast
    if equivalence is None:
        return f"`{leader}` against `{name}`: fewer than 2 shared seeds, not judged."
    size = (f"`{leader}` − `{name}` = {signed(equivalence.difference, task)} {unit} over "
            f"{equivalence.seeds} shared seeds")
    if verdict.status == "beaten":
        return (f"`{leader}` beats `{name}` ({size}; paired t-test, Holm-adjusted "
                f"{p_value(contrast.adjusted_p)} below the look's level {verdict.level:.3g}).")
    if verdict.status == "same":
        return (f"`{leader}` and `{name}` are practically the same ({size}, within "
                f"±{signed(settings.margin, task).lstrip('+')}; two one-sided tests, "
                f"{p_value(equivalence.p)}).")
    more = (f" About {verdict.seeds_needed} shared seeds would decide it (power 0.8)."
            if verdict.seeds_needed else "")
    return f"`{leader}` against `{name}` is undecided ({size}).{more}"


def tuning_section(tuning: dict, sweep: DictConfig, metric: str, folder: Path,
                   maximize: bool) -> list[str]:
    """What tuning chose for each variant (`tuning`: its tuning study), on how many trials, and
    how much it mattered."""
    curves, rows = {}, []
    for variant, study in tuning.items():
        completed = finished(study) if study else []
        values = [t.value for t in best_first(completed, lambda t: t.value, maximize)]
        if not values:
            rows.append([f"`{variant}`", "0", "–", "–", "–", "–"])
            continue
        chosen = " ".join(f"{k}={param(v)}" for k, v in study.best_trial.params.items())
        rows.append([f"`{variant}`", f"{len(study.trials)} ({status_counts(study.trials)})",
                     f"`{chosen}`", number(values[0]), number(values[len(values) // 2]),
                     number(values[-1])])
        running = max if maximize else min
        ordered = [t.value for t in sorted(completed, key=lambda t: t.number)]
        curves[variant] = [running(ordered[: i + 1]) for i in range(len(ordered))]
    own = "".join(f", `{variant}` also {', '.join(f'`{k}`' for k in keys)}"
                  for variant, keys in sweep.tune.variant_space.items())
    lines = ["## Tuning", "", f"Each variant was tuned on the same budget of "
             f"{sweep.tune.n_trials} trials ({sweep.tune.sampler}, {sweep.tune.pruner} pruner) "
             f"over {', '.join(f'`{k}`' for k in sweep.tune.space)}{own}, all on training seed "
             f"{sweep.tune.seed}; the seeds that judge below were never used to choose. Best, "
             f"median and worst completed trial say how sensitive a variant is to the tuned "
             f"values.", ""]
    lines += table(["variant", "trials", "chosen", f"best {metric}", "median", "worst"], rows)
    if curves:
        save(tuning_figure(curves, metric), folder / "tuning_curves.png")
        lines += ["", "![Best value found per tuning trial](tuning_curves.png)"]
    return [*lines, ""]


def comparison_section(study, sweep: DictConfig, metric: str, folder: Path) -> list[str]:
    maximize = study.direction == StudyDirection.MAXIMIZE
    task = task_of(finished(study))
    variants = best_first(group_variants(study), lambda v: v.objective(metric).mean, maximize)
    rows = []
    for variant in variants:
        test, objective = variant.test(task), variant.objective(metric)
        rows.append([f"`{variant.name}`", str(test.n),
                     number(test.mean), number(test.std), interval(test),
                     number(objective.mean), number(objective.std), interval(objective),
                     *(str(variant.statuses[s]) for s in ("pruned", "failed", "diverged"))])
    lines = ["## Variants", "",
             f"Best first by mean best `{metric}` ({'highest' if maximize else 'lowest'} first). "
             f"Test {task.score_label} is that of the last epoch; the 95% confidence interval of "
             f"a mean is Student's t over the seeds.", ""]
    lines += table(["variant", "seeds", f"test {task.score_label}", "std", "95% CI",
                    f"best {metric}", "std", "95% CI", "pruned", "failed", "diverged"], rows)
    reused = sum("reused_from" in t.user_attrs for t in finished(study))
    if reused:
        lines += ["", f"{reused} trial(s) reused an identical earlier configuration: "
                      f"counted once."]
    measured = [v for v in variants if v.trials]
    lines += ["", "## Is the difference real?", ""]
    if len(measured) < 2:
        lines.append("Fewer than two variants have a completed trial: nothing to compare.")
        return lines
    if stages.is_staged(sweep):
        lines += race_verdicts(stages.race_state(sweep, study), stages.race_settings(sweep),
                               task)
    else:
        lines += fixed_verdicts(measured, task)
    save(score_figure(measured, task), folder / "test_score.png")
    save(curves_figure(measured, task), folder / "learning_curves.png")
    lines += ["", "## Figures", "",
              f"![Final test {task.score_label} per variant](test_score.png)", "",
              "![Mean learning curves per variant](learning_curves.png)"]
    return lines


def comparison_summary(study, sweep: DictConfig) -> list[str]:
    """What a comparison found, for the terminal: each variant's mean test score with its
    interval, then the verdicts (the report's sentences)."""
    maximize = study.direction == StudyDirection.MAXIMIZE
    task = task_of(finished(study))
    metric = study_metric(study, sweep)
    variants = best_first(group_variants(study), lambda v: v.objective(metric).mean, maximize)
    measured = [v for v in variants if v.trials]
    lines = [f"  {v.name}: test {task.score_label} {number(v.test(task).mean)}, 95% CI "
             f"{interval(v.test(task))}, {len(v.trials)} seed{'s' * (len(v.trials) != 1)}"
             for v in measured]
    if len(measured) >= 2:
        verdicts = race_verdicts(stages.race_state(sweep, study), stages.race_settings(sweep),
                                 task) if stages.is_staged(sweep) \
            else fixed_verdicts(measured, task)
        lines += [f"  {line.removeprefix('- ')}" for line in verdicts
                  if line and not line.startswith("(")]
        fewest = min(len(v.trials) for v in measured)
        if not stages.is_staged(sweep) and 2 <= fewest < ADVISED_SEEDS:
            lines.append(f"  {fewest} seeds: a 95% interval spans ±{t_975(fewest):.1f} standard "
                         f"errors (Student's t), so only large gaps show; "
                         f"sweep.seeds={ADVISED_SEEDS} narrows it to ±{t_975(ADVISED_SEEDS):.1f}.")
    return [line.replace("`", "") for line in lines]


def importance_problem(study) -> str | None:
    """Why parameter importances cannot be computed, or None when they can."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(trials) < 2:
        return f"they need at least 2 completed trials; this study has {len(trials)}."
    if not varying_params(trials):
        return "no parameter took more than one value among the completed trials."
    if len({t.value for t in trials}) == 1:
        return "every completed trial has the same objective value."
    return None


def importances_section(study, metric: str, folder: Path) -> list[str]:
    lines = ["## Parameter importances", ""]
    problem = importance_problem(study)
    if problem:
        return [*lines, f"No parameter importances: {problem}"]
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # A parameter that never changed would still get a share of the importance.
    params = varying_params(completed)
    importances = optuna.importance.get_param_importances(study, params=params)
    lines += table(["parameter", "importance"],
                   [[f"`{name}`", f"{value:.3f}"] for name, value in importances.items()])
    constant = sorted({name for t in completed for name in t.params} - set(params))
    if constant:
        lines += ["", f"Left out (one value only): {', '.join(f'`{c}`' for c in constant)}."]
    save_optuna_plot(optuna.visualization.matplotlib.plot_param_importances,
                     folder / "importances.png", study, params=params,
                     target_name=metric)
    return [*lines, "", "![Parameter importances](importances.png)"]


def top_trials_table(trials: list[FrozenTrial], metric: str, task: Task) -> list[str]:
    names = sorted({name for t in trials for name in t.params})
    rows = [[str(rank), trial_label(t), number(t.value),
             *(param(t.params[n]) if n in t.params else "–" for n in names),
             number(final(t, f"test_{task.score}"))]
            for rank, t in enumerate(trials, start=1)]
    return table(["rank", "trial", metric, *(f"`{n}`" for n in names),
                  f"test {task.score_label} (last epoch)"], rows)


def best_section(study, best: FrozenTrial, sweep: DictConfig, metric: str,
                 task: Task) -> list[str]:
    # the overrides that decide the result: where it records and checkpoints stays the user's
    decisive = [o for o in best.user_attrs.get("overrides", [])
                if decides_the_result(o.split("=", 1)[0].lstrip("+~"))]
    command = shlex.join(["uv", "run", "mlp-train", *decisive])
    lines = ["## Best configuration", "",
             f"Trial {best.number}, best `{metric}` {number(best.value)}:", "",
             "```bash", command, "```", "",
             f"Test {task.score_label} after its last epoch: "
             f"{number(final(best, f'test_{task.score}'))} "
             f"(measured after the search, not used to choose it)."]
    if best_preset_path(sweep.study_name).is_file():
        lines += ["", f"The same configuration as a preset: "
                      f"`{best_preset_command(sweep.study_name)}`."]
        if study.best_trial.number != best.number:
            lines += ["", f"Careful: the preset was written from Optuna's best trial "
                          f"{study.best_trial.number}, which diverged after its best epoch."]
    return lines


def search_section(study, sweep: DictConfig, metric: str, folder: Path,
                   detailed: bool) -> list[str]:
    maximize = study.direction == StudyDirection.MAXIMIZE
    completed = finished(study)
    task = task_of(completed)
    top = best_first(completed, lambda t: t.value, maximize)[:TOP_TRIALS]
    if not top:
        return ["No trial completed: no ranking, no best configuration.", ""]
    lines = [f"## Top {len(top)} trials", "",
              *top_trials_table(top, metric, task), "",
              *best_section(study, top[0], sweep, metric, task), "",
              *importances_section(study, metric, folder), ""]
    plots = {"history": ("Optimisation history",
                         optuna.visualization.matplotlib.plot_optimization_history)}
    if detailed:
        plots |= {"parallel_coordinates": ("Parallel coordinates",
                                           optuna.visualization.matplotlib.plot_parallel_coordinate),
                  "slices": ("Slices", optuna.visualization.matplotlib.plot_slice)}
    for name, (title, plot) in plots.items():
        save_optuna_plot(plot, folder / f"{name}.png", study, target_name=metric)
        lines += [f"## {title}", "", f"![{title}]({name}.png)", ""]
    return lines


def write_report(study, sweep: DictConfig, folder: Path, detailed: bool = False) -> Path:
    """`folder/report.md` and its figures, and `report.html` with them inside; `detailed` adds
    the parallel coordinates and slice plots of a search."""
    folder.mkdir(parents=True, exist_ok=True)
    metric = study_metric(study, sweep)
    kind = study_kind(study, sweep)
    trials = study.get_trials(deepcopy=False)
    lines = [f"# Study `{sweep.study_name}`", "",
             f"A {kind} that {study.direction.name.lower()}s `{metric}` (each trial's best "
             f"epoch). {len(trials)} trials: {status_counts(trials) or 'none yet'}.", ""]
    tuning = stages.tuning_studies(sweep) if sweep.tune is not None else None
    if kind == "comparison":
        if tuning is not None:
            maximize = study.direction == StudyDirection.MAXIMIZE
            lines += tuning_section(tuning, sweep, metric, folder, maximize)
        lines += comparison_section(study, sweep, metric, folder)
    else:
        lines += search_section(study, sweep, metric, folder, detailed)
    lines += ["", *cost_lines(study, tuning)]
    path = folder / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    write_html(path)
    return path
