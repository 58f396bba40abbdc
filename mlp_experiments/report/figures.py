"""The report's figures: each variant's score with its interval, and its mean learning curve."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import numpy as np
import optuna

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mlp_experiments.report.trials import Variant, mean_curve
from mlp_experiments.task import Task

DPI = 120


def save(figure: Figure, path: Path, **savefig_args) -> None:
    figure.savefig(path, dpi=DPI, **savefig_args)
    plt.close(figure)


def save_optuna_plot(plot, path: Path, *args, **kwargs) -> None:
    """Optuna's matplotlib plots switch the global style to ggplot, warn that they are
    experimental and, where a parameter took one value in every trial, that matplotlib widens
    its axis: all of it stays inside this call."""
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Attempting to set identical low and high",
                                UserWarning)
        axes = np.ravel(plot(*args, **kwargs))
        figure = axes[0].figure
        width, height = figure.get_size_inches()
        figure.set_size_inches(max(width, 3.5 * len(axes) + 1.5), height)  # room per slice panel
        # Not tight_layout: it cannot place the colour bars of some of these plots.
        save(figure, path, bbox_inches="tight")


def score_figure(variants: list[Variant], task: Task) -> Figure:
    """Mean final test score per variant with its 95% CI, each seed as a dot beside it. Points,
    not bars: the axis is zoomed to the scores (gaps of a point would vanish from 0 to 1), and a
    bar cut off above 0 would exaggerate them."""
    variants = [v for v in variants if v.trials]
    summaries = [v.test(task) for v in variants]
    errors = np.nan_to_num([[s.mean - s.low for s in summaries],
                            [s.high - s.mean for s in summaries]])  # none below 2 seeds
    positions = np.arange(len(variants))
    figure, axis = plt.subplots(figsize=(max(6.0, 1.4 * len(variants) + 2), 4.5))
    axis.errorbar(positions, [s.mean for s in summaries], yerr=errors, fmt="o", markersize=8,
                  capsize=8, color="black", label="mean, 95% CI", zorder=3)
    for position, variant, summary in zip(positions, variants, summaries, strict=True):
        values = variant.test_values(task)
        axis.scatter(np.full(len(values), position + 0.18), values, color=f"C{position}",
                     s=14, alpha=0.8, label="one seed" if position == 0 else None)
        axis.annotate(f"{summary.mean:.4f}", (position, summary.mean), xytext=(-10, 0),
                      textcoords="offset points", ha="right", va="center", fontweight="bold")
    axis.set_xticks(positions, [v.name for v in variants],
                    rotation=20 if max(len(v.name) for v in variants) > 10 else 0)
    axis.set_xlim(-0.6, len(variants) - 0.4)
    axis.set_xlabel("variant")
    axis.set_ylabel(f"test {task.score_label} after the last epoch")
    axis.set_title(f"Final test {task.score_label} per variant (mean over seeds, 95% CI)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(loc="best")
    figure.tight_layout()
    return figure


def curves_figure(variants: list[Variant], task: Task) -> Figure:
    """Mean validation and test score per epoch per variant, shaded ±1 std over seeds."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, split in zip(axes, ("validation", "test"), strict=True):
        key = f"{'val' if split == 'validation' else 'test'}_{task.score}"
        for index, variant in enumerate(variants):
            epochs, mean, std = mean_curve([t.user_attrs.get("history", [])
                                            for t in variant.trials], key)
            if not len(epochs):
                continue
            axis.plot(epochs, mean, marker="o", markersize=3, color=f"C{index}",
                      label=f"{variant.name} ({len(variant.trials)} seeds)")
            axis.fill_between(epochs, mean - std, mean + std, color=f"C{index}", alpha=0.2)
        axis.set_title(f"{split.capitalize()} {task.score_label} (mean ± 1 std over seeds)")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(task.score_label)
        axis.grid(alpha=0.3)
    axes[0].legend(title="variant")
    figure.tight_layout()
    return figure


def tuning_figure(curves: dict[str, list[float]], metric: str) -> Figure:
    """Each variant's best objective so far against its tuning trials: how fast tuning found
    its value, and whether more trials would still have helped."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, (name, best_so_far) in enumerate(curves.items()):
        axis.plot(np.arange(1, len(best_so_far) + 1), best_so_far, marker="o", markersize=3,
                  color=f"C{index}", label=name)
    axis.set_xlabel("tuning trial")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(f"best {metric} so far")
    axis.set_title("Tuning: best value found per variant (equal budgets)")
    axis.grid(alpha=0.3)
    axis.legend(title="variant")
    figure.tight_layout()
    return figure
