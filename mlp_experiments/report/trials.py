"""A study's trials as the report reads them: their status, score, variant and history."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from mlp_experiments.report.stats import Summary, summarise
from mlp_experiments.sweep.spec import SEED_KEY
from mlp_experiments.sweep.study import ended_on_its_own
from mlp_experiments.task import TIMINGS, Task, metric_range


def task_of(trials: list[FrozenTrial]) -> Task:
    """The task the trials trained on, from the scores their histories hold."""
    histories = [t.user_attrs.get("history") or [] for t in trials]
    return Task.of_history(next((h for h in histories if h and "test_rmse" in h[-1]), []))


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
        return "failed" if ended_on_its_own(trial) else "interrupted"
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


def study_metric(study, sweep: DictConfig) -> str:
    """The metric the study's trials were judged by, as recorded when it was created."""
    return study.user_attrs.get("metric", sweep.metric)


def study_kind(study, sweep: DictConfig) -> str:
    """The study's recorded kind; without tracking none is recorded: the rule tracking uses."""
    inferred = "comparison" if sweep.variants or sweep.sampler == "grid" else "search"
    return study.user_attrs.get("kind", inferred)


@dataclass
class Variant:
    name: str
    trials: list[FrozenTrial] = field(default_factory=list)  # complete ones, one per seed
    statuses: Counter = field(default_factory=Counter)

    def test_values(self, task: Task) -> list[float]:
        return [final(t, f"test_{task.score}") for t in self.trials]

    def by_seed(self, values: list) -> dict:
        """`values` (one per trial) keyed by seed, which pairs two variants' runs; keyed by
        trial (pairing nothing) where the trials do not each have a seed of their own."""
        seeds = [t.params.get(SEED_KEY) for t in self.trials]
        if None in seeds or len(set(seeds)) < len(seeds):
            seeds = [f"trial {t.number}" for t in self.trials]
        return dict(zip(seeds, values, strict=True))

    def test_by_seed(self, task: Task) -> dict:
        """The final test scores, keyed by seed."""
        return self.by_seed(self.test_values(task))

    def results_by_seed(self) -> dict:
        """Every metric of every epoch but the timings, keyed by seed: two computations that
        are the same have the same results, to the last bit."""
        return self.by_seed([[{key: value for key, value in epoch.items() if key not in TIMINGS}
                              for epoch in t.user_attrs.get("history") or []]
                             for t in self.trials])

    def test(self, task: Task) -> Summary:
        return summarise(self.test_values(task), metric_range(task.score))

    def objective(self, metric: str) -> Summary:
        return summarise([t.value for t in self.trials], metric_range(metric))


def group_variants(study) -> list[Variant]:
    variants: dict[str, Variant] = {}
    for trial in study.get_trials(deepcopy=False):
        variant = variants.setdefault(variant_of(trial), Variant(variant_of(trial)))
        variant.statuses[status(trial)] += 1
        # A reused trial repeats an earlier one's numbers: counting it twice fakes precision.
        if status(trial) == "complete" and "reused_from" not in trial.user_attrs:
            variant.trials.append(trial)
    return list(variants.values())


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


def varying_params(trials: list[FrozenTrial]) -> list[str]:
    names = sorted({name for t in trials for name in t.params})
    return [name for name in names if len({repr(t.params.get(name)) for t in trials}) > 1]


def trial_label(trial: FrozenTrial) -> str:
    reused = trial.user_attrs.get("reused_from")
    return str(trial.number) if reused is None else f"{trial.number} (reuses {reused})"
