"""A study's report in Markdown: a comparison's variants side by side with their statistics, or
a search's top trials, parameter importances and best configuration."""

from __future__ import annotations

import math
import shlex
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
from omegaconf import DictConfig
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from mlp_experiments.report.figures import curves_figure, save, save_optuna_plot, score_figure
from mlp_experiments.report.stats import Summary, best_first, within_noise
from mlp_experiments.report.trials import (
    Variant,
    final,
    finished,
    group_variants,
    status,
    study_kind,
    task_of,
    trial_label,
    varying_params,
)
from mlp_experiments.sweep.presets import best_preset_command, best_preset_path
from mlp_experiments.task import Task, higher_is_better

TOP_TRIALS = 10


def number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def interval(summary: Summary) -> str:
    if summary.n < 2:
        return f"undefined (n = {summary.n})"
    return f"[{number(summary.mean - summary.ci95)}, {number(summary.mean + summary.ci95)}]"


def p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def param(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def status_counts(trials: list[FrozenTrial]) -> str:
    counts = Counter(status(t) for t in trials)
    return ", ".join(f"{count} {name}" for name, count in counts.most_common())


def seeds_text(a: int, b: int) -> str:
    if a == b:
        return f"{a} seed{'s' if a != 1 else ''} each"
    return f"{a} and {b} seeds"


def difference_text(difference: float, task: Task) -> str:
    if not task.regression:
        return f"{100 * difference:.1f} points of test accuracy"
    return f"{difference:.3g} in test RMSE"


def comparison_sentence(a: Variant, b: Variant, task: Task) -> str:
    values_a, values_b = a.test_values(task), b.test_values(task)
    same, p = within_noise(values_a, values_b)
    seeds = seeds_text(len(values_a), len(values_b))
    if same is None:
        return (f"`{a.name}` against `{b.name}` cannot be judged: it needs at least 2 seeds on "
                f"each side and some spread between seeds ({seeds}).")
    if same:
        return (f"`{a.name}` and `{b.name}` are within noise of each other "
                f"(Welch t-test p = {p_value(p)}, {seeds}).")
    mean_a, mean_b = np.mean(values_a), np.mean(values_b)
    a_wins = (mean_a > mean_b) == higher_is_better(task.score)
    winner, loser = (a, b) if a_wins else (b, a)
    difference = difference_text(abs(mean_a - mean_b), task)
    return f"`{winner.name}` beats `{loser.name}` by {difference} (p = {p_value(p)}, {seeds})."


def comparison_section(study, metric: str, folder: Path) -> list[str]:
    maximize = study.direction == StudyDirection.MAXIMIZE
    task = task_of(finished(study))
    variants = best_first(group_variants(study), lambda v: v.objective().mean, maximize)
    rows = []
    for variant in variants:
        test, objective = variant.test(task), variant.objective()
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
    lines += [f"- {comparison_sentence(measured[0], other, task)}" for other in measured[1:]]
    save(score_figure(measured, task), folder / "test_score.png")
    save(curves_figure(measured, task), folder / "learning_curves.png")
    lines += ["", "(Welch's t-test on the per-seed final test scores, 5% level.)", "",
              "## Figures", "",
              f"![Final test {task.score_label} per variant](test_score.png)", "",
              "![Mean learning curves per variant](learning_curves.png)"]
    return lines


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
    command = shlex.join(["uv", "run", "mlp-train",
                          *best.user_attrs.get("overrides", [])])
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
    epochs = sum(len(t.user_attrs.get("history", [])) for t in study.get_trials(deepcopy=False)
                 if "reused_from" not in t.user_attrs)
    lines = [f"Epochs trained in total: {epochs}.", ""]
    if not top:
        return [*lines, "No trial completed: no ranking, no best configuration."]
    lines += [f"## Top {len(top)} trials", "",
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
    """`folder/report.md` and its figures; `detailed` adds the parallel coordinates and slice
    plots of a search."""
    folder.mkdir(parents=True, exist_ok=True)
    metric = study.user_attrs.get("metric", sweep.metric)
    kind = study_kind(study, sweep)
    trials = study.get_trials(deepcopy=False)
    lines = [f"# Study `{sweep.study_name}`", "",
             f"A {kind} that {study.direction.name.lower()}s `{metric}` (each trial's best "
             f"epoch). {len(trials)} trials: {status_counts(trials) or 'none yet'}.", ""]
    if kind == "comparison":
        lines += comparison_section(study, metric, folder)
    else:
        lines += search_section(study, sweep, metric, folder, detailed)
    path = folder / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
