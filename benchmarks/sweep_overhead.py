"""The fixed cost of a sweep trial: its wall time minus its epochs.

    uv run python benchmarks/sweep_overhead.py [--trials 16] [--repeats 2]

Runs grid studies of `--trials` one-epoch trials of the default MLP on synthetic data (Optuna
storage in SQLite, the median pruner asked every epoch), alternately with every trial an MLflow
child run (its params, config, datasets, per-epoch metrics, state dict) and with tracking=none.
A trial's fixed cost is its wall time (Optuna's start to completion) minus its epochs (the
engine's `epoch_time_s`): composing its config, journaling its record (the worker's sender
process sends it to MLflow on the other core), the checkpoints and the Optuna calls. Prints
the median fixed cost of each arm (target: <= 0.15 s with MLflow), and the whole command's
seconds per trial, which adds the plan, the parent run, the wait for the sender, the figures
of the best trials and the report, paid once per command.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from mlp_experiments.sweep import command

GRID = """
study_name: {name}
space:
  trainer.seed: range(0, {trials})
sampler: grid
pruner: median
"""


def fixed_costs(folder: Path, name: str, trials: int, tracking: list[str]) -> tuple[list, float]:
    """(fixed cost of each trial, the command's wall seconds per trial)."""
    (folder / f"{name}.yaml").write_text(GRID.format(name=name, trials=trials))
    started = time.perf_counter()
    study = command.run_sweep([
        f"sweep={folder / f'{name}.yaml'}", f"sweep.storage=sqlite:///{folder / 'optuna.db'}",
        "data=synthetic", "trainer.epochs=1", f"trainer.checkpoint_dir={folder / 'checkpoints'}",
        *tracking,
    ])
    wall = time.perf_counter() - started
    costs = [(t.datetime_complete - t.datetime_start).total_seconds()
             - sum(epoch["epoch_time_s"] for epoch in t.user_attrs["history"])
             for t in study.trials]
    return costs, wall / len(study.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    arms = {"mlflow": [], "none": ["tracking=none"]}
    costs = {arm: [] for arm in arms}
    per_trial = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as temporary, contextlib.chdir(temporary):
        folder = Path(temporary)
        arms["mlflow"] = [f"tracking.uri=sqlite:///{folder / 'mlflow.db'}"]
        fixed_costs(folder, "warm_up", 2, arms["mlflow"])  # imports, MLflow tables
        for repeat in range(args.repeats):
            for arm, tracking in arms.items():
                trial_costs, seconds = fixed_costs(folder, f"{arm}_{repeat}", args.trials,
                                                   tracking)
                costs[arm] += trial_costs
                per_trial[arm].append(seconds)
    for arm in arms:
        print(f"tracking={arm:6s} fixed cost of a trial: median "
              f"{statistics.median(costs[arm]):.3f} s (min {min(costs[arm]):.3f}, max "
              f"{max(costs[arm]):.3f}, {len(costs[arm])} trials); the command: "
              f"{statistics.median(per_trial[arm]):.2f} s per trial")
    print(f"median fixed cost with MLflow = {statistics.median(costs['mlflow']):.3f} s "
          f"(target <= 0.15)")


if __name__ == "__main__":
    main()
