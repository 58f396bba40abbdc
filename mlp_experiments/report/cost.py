"""What a study cost: its trials, the epochs they trained and the CPU time they took (each trial
records its process's CPU seconds, `cpu_s`: torch's threads included, start-up not).
A tuned comparison's cost is its tuning studies' and its evaluation study's together."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial


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


def trials_cost(trials: list[FrozenTrial]) -> Cost:
    trained = [t for t in trials if "reused_from" not in t.user_attrs and "outcome" in t.user_attrs]
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


def cost_lines(study, tuning: dict[str, object] | None) -> list[str]:
    """The report's cost section; `tuning` holds a tuned comparison's tuning studies."""
    evaluated = trials_cost(study.get_trials(deepcopy=False))
    lines = ["## Cost", ""]
    if tuning is None:
        return [*lines, f"{evaluated.describe()}."]
    tuned = tuning_cost(tuning)
    return [*lines, f"- tuning: {tuned.describe()}", f"- evaluation: {evaluated.describe()}",
            f"- in all: {(tuned + evaluated).describe()}"]
