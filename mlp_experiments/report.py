"""`python -m mlp_experiments.report sweep=<name> [sweep.key=value ...] [out=DIR]`

Writes a Markdown report of the Optuna study that `python -m mlp_experiments.sweep` ran, with its
figures, to `DIR/<study_name>/report.md` (DIR defaults to `outputs/reports` under the working
directory), and logs the folder to the study's MLflow parent run. A comparison (named variants
x seeds) gets per-variant means with 95% confidence intervals and Welch t-tests that say which
differences exceed the seed-to-seed noise; a search gets its top trials, parameter importances
and the best configuration as a command.
`summarise_in_mlflow` is what the sweep command calls when a study ends.
"""

from __future__ import annotations

import math
import shlex
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from optuna.study import StudyDirection  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from scipy import stats  # noqa: E402

from mlp_experiments.config import UserError, compose_config  # noqa: E402
from mlp_experiments.sweep import (  # noqa: E402
    best_preset_command,
    best_preset_path,
    load_sweep,
    make_storage,
    split_arguments,
    storage_url,
)

REPORTS_DIR = Path("outputs") / "reports"  # under the working directory; out=DIR overrides
ALPHA = 0.05  # significance level of the Welch t-tests
TOP_TRIALS = 10
SEED_KEY = "trainer.seed"
DPI = 120


# ---------------------------------------------------------------------------- statistics


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


# ---------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class Score:
    """The score each epoch's history records: accuracy, or RMSE for regression."""

    key: str
    label: str
    higher_is_better: bool


ACCURACY = Score("acc", "accuracy", True)
RMSE = Score("rmse", "RMSE", False)


def score_of(trials: list[FrozenTrial]) -> Score:
    histories = [t.user_attrs.get("history") or [{}] for t in trials]
    return RMSE if any("test_rmse" in history[-1] for history in histories) else ACCURACY


def final(trial: FrozenTrial, key: str) -> float:
    """A metric of the trial's last epoch (nan when it recorded none)."""
    history = trial.user_attrs.get("history") or [{}]
    return float(history[-1].get(key, math.nan))


def status(trial: FrozenTrial) -> str:
    """complete, pruned, diverged, failed (crashed), interrupted (its worker died; Optuna ran it
    again as a new trial) or running."""
    outcome = trial.user_attrs.get("outcome")
    # A run that diverged after some good epochs still returns a finite best value: COMPLETE.
    if outcome == "diverged":
        return "diverged"
    if trial.state == TrialState.FAIL:
        return "interrupted" if outcome is None else "failed"
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return "running"
    return trial.state.name.lower()


def finished(study) -> list[FrozenTrial]:
    """The trials that completed without diverging: the ones the statistics use."""
    return [t for t in study.get_trials(deepcopy=False) if status(t) == "complete"]


def variant_of(trial: FrozenTrial) -> str:
    """What a comparison trial compares: its variant and any searched value other than the seed
    (a grid comparison without named variants has only the latter)."""
    items = sorted(trial.params.items(), key=lambda item: (item[0] != "variant", item[0]))
    parts = [str(v) if k == "variant" else f"{k}={v}" for k, v in items if k != SEED_KEY]
    return " ".join(parts) or "(no parameters)"


def study_kind(study, sweep: DictConfig) -> str:
    """The study's recorded kind; without tracking none is recorded: the rule tracking uses."""
    inferred = "comparison" if sweep.variants or sweep.sampler == "grid" else "search"
    return study.user_attrs.get("kind", inferred)


def best_first(items: list, value, maximize: bool) -> list:
    """The items sorted by value(item), best first, nan last."""

    def key(item) -> tuple[bool, float]:
        v = value(item)
        return math.isnan(v), -v if maximize else v

    return sorted(items, key=key)


# ---------------------------------------------------------------------------- formatting


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


# ---------------------------------------------------------------------------- figures


def save(figure: Figure, path: Path, **savefig_args) -> None:
    figure.savefig(path, dpi=DPI, **savefig_args)
    plt.close(figure)


def save_optuna_plot(plot, path: Path, *args, **kwargs) -> None:
    """Optuna's matplotlib plots switch the global style to ggplot and warn that they are
    experimental: both stay inside this call."""
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = np.ravel(plot(*args, **kwargs))
        figure = axes[0].figure
        width, height = figure.get_size_inches()
        figure.set_size_inches(max(width, 3.5 * len(axes) + 1.5), height)  # room per slice panel
        # Not tight_layout: it cannot place the colour bars of some of these plots.
        save(figure, path, bbox_inches="tight")


def mean_curve(histories: list[list[dict]], key: str) -> tuple[np.ndarray, ...]:
    """(epochs, mean, std) of a metric over runs that may have stopped at different epochs: each
    epoch averages the runs that reached it; the std is 0 where only one did."""
    length = max((len(h) for h in histories), default=0)
    values = np.full((len(histories), length), np.nan)
    for row, history in zip(values, histories, strict=True):
        row[: len(history)] = [epoch.get(key, math.nan) for epoch in history]
    counts = (~np.isnan(values)).sum(axis=0)
    mean = np.divide(np.nansum(values, axis=0), counts, out=np.full(length, np.nan),
                     where=counts > 0)
    squares = np.nansum((values - mean) ** 2, axis=0)
    std = np.sqrt(np.divide(squares, counts - 1, out=np.zeros(length), where=counts > 1))
    return np.arange(1, length + 1), mean, std


# ---------------------------------------------------------------------------- comparison


@dataclass
class Variant:
    name: str
    trials: list[FrozenTrial] = field(default_factory=list)  # complete ones, one per seed
    statuses: Counter = field(default_factory=Counter)

    def test_values(self, score: Score) -> list[float]:
        return [final(t, f"test_{score.key}") for t in self.trials]

    def test(self, score: Score) -> Summary:
        return summarise(self.test_values(score))

    def objective(self) -> Summary:
        return summarise([t.value for t in self.trials])


def group_variants(study) -> list[Variant]:
    variants: dict[str, Variant] = {}
    for trial in study.get_trials(deepcopy=False):
        variant = variants.setdefault(variant_of(trial), Variant(variant_of(trial)))
        variant.statuses[status(trial)] += 1
        # A reused trial repeats an earlier one's numbers: counting it twice fakes precision.
        if status(trial) == "complete" and "reused_from" not in trial.user_attrs:
            variant.trials.append(trial)
    return list(variants.values())


def seeds_text(a: int, b: int) -> str:
    if a == b:
        return f"{a} seed{'s' if a != 1 else ''} each"
    return f"{a} and {b} seeds"


def difference_text(difference: float, score: Score) -> str:
    if score is ACCURACY:
        return f"{100 * difference:.1f} points of test accuracy"
    return f"{difference:.3g} in test RMSE"


def comparison_sentence(a: Variant, b: Variant, score: Score) -> str:
    values_a, values_b = a.test_values(score), b.test_values(score)
    same, p = within_noise(values_a, values_b)
    seeds = seeds_text(len(values_a), len(values_b))
    if same is None:
        return (f"`{a.name}` against `{b.name}` cannot be judged: it needs at least 2 seeds on "
                f"each side and some spread between seeds ({seeds}).")
    if same:
        return (f"`{a.name}` and `{b.name}` are within noise of each other "
                f"(Welch t-test p = {p_value(p)}, {seeds}).")
    mean_a, mean_b = np.mean(values_a), np.mean(values_b)
    a_wins = (mean_a > mean_b) == score.higher_is_better
    winner, loser = (a, b) if a_wins else (b, a)
    difference = difference_text(abs(mean_a - mean_b), score)
    return f"`{winner.name}` beats `{loser.name}` by {difference} (p = {p_value(p)}, {seeds})."


def score_figure(variants: list[Variant], score: Score) -> Figure:
    """Mean final test score per variant, 95% CI as error bars, each seed as a dot."""
    variants = [v for v in variants if v.trials]
    summaries = [v.test(score) for v in variants]
    errors = [0.0 if math.isnan(s.ci95) else s.ci95 for s in summaries]
    positions = np.arange(len(variants))
    figure, axis = plt.subplots(figsize=(max(6.0, 1.4 * len(variants) + 2), 4.5))
    axis.bar(positions, [s.mean for s in summaries], yerr=errors, capsize=8, alpha=0.75,
             color=[f"C{i}" for i in positions], label="mean, 95% CI")
    for position, variant, summary, error in zip(positions, variants, summaries, errors,
                                                 strict=True):
        values = variant.test_values(score)
        axis.scatter(np.full(len(values), position), values, color="black", s=14, zorder=3,
                     label="one seed" if position == 0 else None)
        axis.annotate(f"{summary.mean:.4f}", (position, summary.mean + error),
                      xytext=(0, 5), textcoords="offset points", ha="center", fontweight="bold")
    shown = [y for s, e, v in zip(summaries, errors, variants, strict=True)
             for y in (s.mean - e, s.mean + e, *v.test_values(score))]
    # Zoomed in: differences of a point or two would vanish on an axis from 0 to 1.
    margin = max(max(shown) - min(shown), 0.005) * 0.35
    axis.set_ylim(max(min(shown) - margin, 0.0), max(shown) + margin)
    axis.set_xticks(positions, [v.name for v in variants],
                    rotation=20 if max(len(v.name) for v in variants) > 10 else 0)
    axis.set_xlabel("variant")
    axis.set_ylabel(f"test {score.label} after the last epoch")
    axis.set_title(f"Final test {score.label} per variant (mean over seeds, 95% CI)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    figure.tight_layout()
    return figure


def curves_figure(variants: list[Variant], score: Score) -> Figure:
    """Mean validation and test score per epoch per variant, shaded ±1 std over seeds."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, split in zip(axes, ("validation", "test"), strict=True):
        key = f"{'val' if split == 'validation' else 'test'}_{score.key}"
        for index, variant in enumerate(variants):
            epochs, mean, std = mean_curve([t.user_attrs.get("history", [])
                                            for t in variant.trials], key)
            if not len(epochs):
                continue
            axis.plot(epochs, mean, marker="o", markersize=3, color=f"C{index}",
                      label=f"{variant.name} ({len(variant.trials)} seeds)")
            axis.fill_between(epochs, mean - std, mean + std, color=f"C{index}", alpha=0.2)
        axis.set_title(f"{split.capitalize()} {score.label} (mean ± 1 std over seeds)")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(score.label)
        axis.grid(alpha=0.3)
    axes[0].legend(title="variant")
    figure.tight_layout()
    return figure


def comparison_section(study, metric: str, folder: Path) -> list[str]:
    maximize = study.direction == StudyDirection.MAXIMIZE
    score = score_of(finished(study))
    variants = best_first(group_variants(study), lambda v: v.objective().mean, maximize)
    rows = []
    for variant in variants:
        test, objective = variant.test(score), variant.objective()
        rows.append([f"`{variant.name}`", str(test.n),
                     number(test.mean), number(test.std), interval(test),
                     number(objective.mean), number(objective.std), interval(objective),
                     *(str(variant.statuses[s]) for s in ("pruned", "failed", "diverged"))])
    lines = ["## Variants", "",
             f"Best first by mean best `{metric}` ({'highest' if maximize else 'lowest'} first). "
             f"Test {score.label} is that of the last epoch; the 95% confidence interval of "
             f"a mean is Student's t over the seeds.", ""]
    lines += table(["variant", "seeds", f"test {score.label}", "std", "95% CI",
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
    lines += [f"- {comparison_sentence(measured[0], other, score)}" for other in measured[1:]]
    save(score_figure(measured, score), folder / "test_score.png")
    save(curves_figure(measured, score), folder / "learning_curves.png")
    lines += ["", "(Welch's t-test on the per-seed final test scores, 5% level.)", "",
              "## Figures", "",
              f"![Final test {score.label} per variant](test_score.png)", "",
              "![Mean learning curves per variant](learning_curves.png)"]
    return lines


# ---------------------------------------------------------------------------- search


def varying_params(trials: list[FrozenTrial]) -> list[str]:
    names = sorted({name for t in trials for name in t.params})
    return [name for name in names if len({repr(t.params.get(name)) for t in trials}) > 1]


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


def trial_label(trial: FrozenTrial) -> str:
    reused = trial.user_attrs.get("reused_from")
    return str(trial.number) if reused is None else f"{trial.number} (reuses {reused})"


def top_trials_table(trials: list[FrozenTrial], metric: str, score: Score) -> list[str]:
    names = sorted({name for t in trials for name in t.params})
    rows = [[str(rank), trial_label(t), number(t.value),
             *(param(t.params[n]) if n in t.params else "–" for n in names),
             number(final(t, f"test_{score.key}"))]
            for rank, t in enumerate(trials, start=1)]
    return table(["rank", "trial", metric, *(f"`{n}`" for n in names),
                  f"test {score.label} (last epoch)"], rows)


def best_section(study, best: FrozenTrial, sweep: DictConfig, metric: str,
                 score: Score) -> list[str]:
    command = shlex.join(["uv", "run", "python", "-m", "mlp_experiments.train",
                          *best.user_attrs.get("overrides", [])])
    lines = ["## Best configuration", "",
             f"Trial {best.number}, best `{metric}` {number(best.value)}:", "",
             "```bash", command, "```", "",
             f"Test {score.label} after its last epoch: {number(final(best, f'test_{score.key}'))} "
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
    score = score_of(completed)
    top = best_first(completed, lambda t: t.value, maximize)[:TOP_TRIALS]
    epochs = sum(len(t.user_attrs.get("history", [])) for t in study.get_trials(deepcopy=False)
                 if "reused_from" not in t.user_attrs)
    lines = [f"Epochs trained in total: {epochs}.", ""]
    if not top:
        return [*lines, "No trial completed: no ranking, no best configuration."]
    lines += [f"## Top {len(top)} trials", "",
              *top_trials_table(top, metric, score), "",
              *best_section(study, top[0], sweep, metric, score), "",
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


# ---------------------------------------------------------------------------- report


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


def summarise_in_mlflow(study, sweep: DictConfig, tracking_cfg: DictConfig,
                        parent_run_id: str, preset: Path | None = None) -> None:
    """Log the report, `trials.csv`, the best value and the best configuration's preset (the
    file the sweep wrote, when it wrote one) to the study's MLflow parent run."""
    client = mlflow.MlflowClient(tracking_cfg.uri)
    metric = study.user_attrs.get("metric", sweep.metric)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            client.log_metric(parent_run_id, f"best_{metric}", study.best_value)
        if preset is not None:
            client.log_text(parent_run_id, preset.read_text(), "best_config.yaml")
        report = write_report(study, sweep, folder / "report", detailed=True)
        client.log_artifacts(parent_run_id, str(report.parent), "report")
        # Each trial's per-epoch history is in its own MLflow run; here it would drown the table.
        frame = study.trials_dataframe().drop(columns=["user_attrs_history"], errors="ignore")
        frame.to_csv(folder / "trials.csv", index=False)
        client.log_artifact(parent_run_id, str(folder / "trials.csv"))
    client.set_terminated(parent_run_id)  # its end time: the last time the study was summarised


# ---------------------------------------------------------------------------- the command


def load_existing_study(sweep: DictConfig, name: str):
    url = storage_url(sweep)
    missing = UserError(
        f"No study '{sweep.study_name}' in {url}: run `python -m mlp_experiments.sweep "
        f"sweep={name}` first (with the same sweep.* overrides)."
    )
    # Opening a SQLite URL creates the file: a typo would leave an empty database behind.
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise missing
    try:
        return optuna.load_study(study_name=sweep.study_name, storage=make_storage(url))
    except KeyError:
        raise missing from None


def split_output(arguments: list[str]) -> tuple[Path, list[str]]:
    """`out=DIR` is the report's; every other argument is the sweep's."""
    out = [a.removeprefix("out=") for a in arguments if a.startswith("out=")]
    folder = Path(out[-1]) if out else REPORTS_DIR
    return folder, [a for a in arguments if not a.startswith("out=")]


def run_report(arguments: list[str]) -> Path:
    out, arguments = split_output(arguments)
    name, sweep_overrides, training = split_arguments(arguments)
    sweep = load_sweep(name, sweep_overrides)
    study = load_existing_study(sweep, name)
    path = write_report(study, sweep, out / sweep.study_name)
    print(path)
    parent_run_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_run_id:
        tracking = compose_config([*sweep.overrides, *training]).tracking
        if tracking.enabled:
            log_report(tracking.uri, parent_run_id, path.parent)
    return path


def log_report(uri: str, run_id: str, folder: Path) -> None:
    try:
        mlflow.MlflowClient(uri).log_artifacts(run_id, str(folder), "report")
    except mlflow.exceptions.MlflowException as error:
        raise UserError(
            f"The report is written, but logging it to the MLflow run {run_id} in {uri} failed "
            f"({error}). Point tracking.uri at the sweep's store, or skip MLflow with "
            f"tracking=none."
        ) from None
    print(f"logged to MLflow run {run_id} (artifact path report)")


def main(arguments: list[str] | None = None) -> None:
    try:
        run_report(sys.argv[1:] if arguments is None else arguments)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
