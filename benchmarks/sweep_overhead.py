"""What a sweep adds to each training run: the same trainings as trials of a study and alone.

    uv run python benchmarks/sweep_overhead.py [--runs 4] [--epochs 3]

In one process (imports paid once), alternately: `--runs` seeds of the concise FashionMNIST MLP
trained as the trials of a grid study (Optuna storage in SQLite, MLflow child runs under a parent
run), and the same seeds trained alone with `train()` (MLflow runs too). Prints the seconds per
run of each and their ratio. Target: a trial costs <= 1.05x the run alone.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from mlp_experiments import sweep as sweeps
from mlp_experiments.config import compose_config
from mlp_experiments.train import train

# Everything runs in a throw-away working directory (MLflow's ./mlruns, any preset): the data
# stays where the default data.root finds it from the directory the benchmark started in.
DATA_ROOT = Path("data").resolve()

GRID = """
study_name: {name}
space:
  trainer.seed: range({first}, {last})
sampler: grid
pruner: none
"""


def common(folder: Path, epochs: int) -> list[str]:
    return [f"trainer.epochs={epochs}", "tracking.log_model=false",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            f"trainer.checkpoint_dir={folder / 'checkpoints'}", f"data.root={DATA_ROOT}"]


def as_trials(folder: Path, seeds: range, epochs: int, name: str) -> tuple[float, float]:
    """(seconds per trial, seconds of the command beyond its trials)."""
    sweeps.SWEEPS_DIR = folder  # the grid lives beside the throw-away stores
    (folder / f"{name}.yaml").write_text(GRID.format(name=name, first=seeds.start,
                                                     last=seeds.stop))
    started = time.perf_counter()
    study = sweeps.run_sweep([f"sweep={name}", f"sweep.storage=sqlite:///{folder / 'optuna.db'}",
                              *common(folder, epochs)])
    wall = time.perf_counter() - started
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]
    return sum(durations) / len(durations), wall - sum(durations)


def alone(folder: Path, seeds: range, epochs: int) -> float:
    started = time.perf_counter()
    for seed in seeds:
        train(compose_config([*common(folder, epochs), f"trainer.seed={seed}"]))
    return (time.perf_counter() - started) / len(seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ratios, trial_seconds, alone_seconds, study_seconds = [], [], [], []
    with tempfile.TemporaryDirectory() as temporary, contextlib.chdir(temporary):
        folder = Path(temporary)
        alone(folder, range(100, 101), 1)  # warm-up: imports, data, MLflow tables
        for repeat in range(args.repeats):
            seeds = range(repeat * args.runs, (repeat + 1) * args.runs)
            per_trial, per_study = as_trials(folder, seeds, args.epochs, f"overhead_{repeat}")
            trial_seconds.append(per_trial)
            study_seconds.append(per_study)
            alone_seconds.append(alone(folder, seeds, args.epochs))
            ratios.append(trial_seconds[-1] / alone_seconds[-1])
    print(f"per run: as a sweep trial {statistics.median(trial_seconds):.2f} s, "
          f"alone {statistics.median(alone_seconds):.2f} s "
          f"({args.runs} runs x {args.repeats} repeats, {args.epochs} epochs)")
    print(f"trial / alone = {statistics.median(ratios):.3f}  (target <= 1.05)")
    print(f"once per sweep command: {statistics.median(study_seconds):.2f} s (plan, parent run, "
          f"report and plots)")


if __name__ == "__main__":
    main()
