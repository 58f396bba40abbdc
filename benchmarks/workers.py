"""Trials per hour of the `search_mlp` space with 1 and 2 worker processes.

    uv run python benchmarks/workers.py [--trials 8] [--epochs 20] [--workers 1 2] [overrides]

Each setting runs `sweeps/search_mlp.yaml` (TPE, its median pruner, the real FashionMNIST, every
trial an MLflow child run) for `--trials` trials of `--epochs` epochs in a fresh study storage;
torch's threads are split between the workers. It prints trials per hour (the command's wall
time, start-up and summary included) and, per trial, the seconds of its epochs against the rest
of the trial. Append `trainer.device=cuda` to measure workers sharing one GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from mlp_experiments.sweep import command

# The sweeps run in a throw-away working directory (their best presets): the data stays where
# the default data.root finds it from the directory the benchmark started in.
DATA_ROOT = Path("data").resolve()


def run(workers: int, trials: int, epochs: int, folder: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    study = command.run_sweep([
        "sweep=search_mlp", f"sweep.study_name=workers_{workers}", f"sweep.n_workers={workers}",
        f"sweep.n_trials={trials}", f"sweep.storage=sqlite:///{folder / f'optuna_{workers}.db'}",
        f"trainer.epochs={epochs}", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"trainer.checkpoint_dir={folder / 'checkpoints'}", f"data.root={DATA_ROOT}", *extra,
    ])
    wall = time.perf_counter() - started
    ended = [t for t in study.trials if t.datetime_complete and "history" in t.user_attrs]
    epochs_seconds = [sum(m["epoch_time_s"] for m in t.user_attrs["history"]) for t in ended]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in ended]
    return {
        "trials_per_hour": len(ended) / wall * 3600,
        "epochs": sum(len(t.user_attrs["history"]) for t in ended),
        "epochs_s": statistics.median(epochs_seconds),
        "rest_of_trial_s": statistics.median(d - e for d, e in zip(durations, epochs_seconds,
                                                                    strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("extra", nargs="*", help="training overrides, e.g. trainer.device=cuda")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary, contextlib.chdir(temporary):
        for workers in args.workers:
            result = run(workers, args.trials, args.epochs, Path(temporary), args.extra)
            print(f"{workers} worker(s): {result['trials_per_hour']:6.0f} trials/hour "
                  f"({args.trials} trials of up to {args.epochs} epochs, {result['epochs']} "
                  f"epochs trained); per trial {result['epochs_s']:.1f} s of epochs, "
                  f"{result['rest_of_trial_s']:.2f} s else", flush=True)


if __name__ == "__main__":
    main()
