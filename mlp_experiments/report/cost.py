"""What a study cost: its trials, the epochs they trained and the CPU time they took (each trial
records its process's CPU seconds, `cpu_s`: torch's threads included, start-up not).
A tuned comparison's cost is its tuning studies' and its evaluation study's together."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial

from mlp_experiments.sweep.study import lost_after_its_end


@dataclass(frozen=True)
class Cost:
    trials: int  # trials that trained (a reused trial repeats an earlier one's numbers: free)
    epochs: int
    cpu_s: float
    timed: int  # trials that recorded their CPU time (older trials did not)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.trials + other.trials, self.epochs + other.epochs,
                    self.cpu_s + other.cpu_s, self.timed + other.timed)

    def describe(self) -> str:
        """`72 trials, 301 epochs, 14.2 CPU-minutes`."""
        cpu = f"{self.cpu_s / 60:.3g} CPU-minutes"
        if self.timed == 0:
            cpu = "CPU time not recorded"
        elif self.timed < self.trials:
            cpu += f" (over the {self.timed} trials that recorded it)"
        return f"{self.trials} trials, {self.epochs} epochs, {cpu}"


NOTHING = Cost(0, 0, 0.0, 0)
FIXED_SEEDS = 5  # the seeds of the comparisons at the notes' settings (docs/compare_*)


def trials_cost(trials: list[FrozenTrial]) -> Cost:
    trained = [t for t in trials if "reused_from" not in t.user_attrs and "outcome" in t.user_attrs
               and not lost_after_its_end(t)]  # its retry reports its epochs
    timed = [t.user_attrs["cpu_s"] for t in trained if "cpu_s" in t.user_attrs]
    return Cost(len(trained), sum(len(t.user_attrs.get("history", [])) for t in trained),
                float(sum(timed)), len(timed))


def tuning_cost(tuning: dict[str, object]) -> Cost:
    """The cost of a tuned comparison's tuning studies (None: a study not created yet)."""
    return sum((trials_cost(s.get_trials(deepcopy=False)) for s in tuning.values() if s),
               NOTHING)


def total_cost(study, tuning: dict[str, object] | None) -> Cost:
    evaluated = trials_cost(study.get_trials(deepcopy=False))
    return evaluated if tuning is None else tuning_cost(tuning) + evaluated


def fixed_design_cost(study) -> Cost | None:
    """What the same variants at one setting on FIXED_SEEDS seeds each would cost: their
    epochs at the CPU time per epoch that this study's runs of each variant measured (the same
    networks for as many epochs); None where a variant has no timed run."""
    runs: dict[str, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        if "cpu_s" in trial.user_attrs and trial.user_attrs.get("history"):
            runs.setdefault(trial.params.get("variant"), []).append(trial)
    if not runs or None in runs:
        return None
    epochs = cpu_s = 0.0
    for trials in runs.values():
        run_epochs = max(len(t.user_attrs["history"]) for t in trials)
        per_epoch = sum(t.user_attrs["cpu_s"] for t in trials) / sum(
            len(t.user_attrs["history"]) for t in trials)
        epochs += FIXED_SEEDS * run_epochs
        cpu_s += FIXED_SEEDS * run_epochs * per_epoch
    n = FIXED_SEEDS * len(runs)
    return Cost(n, int(epochs), cpu_s, n)


def cost_lines(study, tuning: dict[str, object] | None) -> list[str]:
    """The report's cost section; `tuning` holds a tuned comparison's tuning studies."""
    evaluated = trials_cost(study.get_trials(deepcopy=False))
    lines = ["## Cost", ""]
    if tuning is None:
        return [*lines, f"{evaluated.describe()}."]
    tuned = tuning_cost(tuning) + evaluated
    lines += [f"- tuning: {tuning_cost(tuning).describe()}",
              f"- evaluation: {evaluated.describe()}", f"- in all: {tuned.describe()}"]
    fixed = fixed_design_cost(study)
    if fixed is not None and fixed.cpu_s > 0:
        lines += [f"- for scale, the same variants at one setting on {FIXED_SEEDS} fixed seeds: "
                  f"{fixed.describe()} (estimated: their epochs at the CPU time per epoch "
                  f"measured here); this comparison cost {tuned.cpu_s / fixed.cpu_s:.2f} times "
                  f"that"]
    return lines
