"""Sweep throughput with 1, 2 and 3 worker processes on one study storage.

    uv run python benchmarks/workers.py [--trials 6] [--epochs 2] [--storage sqlite]

Each setting runs the same small random search (the concise FashionMNIST MLP, `--epochs` per
trial, MLflow child runs) in a fresh storage; torch's threads are split between the workers
(2 cores: 2 threads for one worker, 1 each for two or three). It prints trials per hour and,
per trial, the seconds spent training and evaluating (the epochs) against the rest: composing
the config, MLflow run start, metrics and artifacts, and the Optuna storage calls between trials.
With a GPU, run it with `trainer.device=cuda` appended to compare workers sharing one GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from mlp_experiments import sweep as sweeps

# The sweeps run in a throw-away working directory (their best presets, MLflow's ./mlruns): the
# data stays where the default data.root finds it from the directory the benchmark started in.
DATA_ROOT = Path("data").resolve()

SEARCH = """
study_name: workers_{count}
overrides: [trainer.epochs={epochs}, tracking.log_model=false]
space:
  optimizer.lr: tag(log, interval(0.05, 0.5))
sampler: random
pruner: none
n_trials: {trials}
"""


def run(count: int, trials: int, epochs: int, folder: Path, extra: list[str]) -> dict:
    (folder / f"workers_{count}.yaml").write_text(
        SEARCH.format(count=count, epochs=epochs, trials=trials))
    started = time.perf_counter()
    study = sweeps.run_sweep([
        f"sweep={folder / f'workers_{count}.yaml'}", f"sweep.n_workers={count}",
        f"sweep.storage=sqlite:///{folder / f'optuna_{count}.db'}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"trainer.checkpoint_dir={folder / 'checkpoints'}", f"data.root={DATA_ROOT}", *extra,
    ])
    wall = time.perf_counter() - started
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]
    epochs_seconds = [sum(m["epoch_time_s"] for m in t.user_attrs["history"])
                      for t in study.trials]
    return {
        "trials_per_hour": len(study.trials) / wall * 3600,
        "epochs_s": statistics.median(epochs_seconds),
        "rest_of_trial_s": statistics.median(d - e for d, e in zip(durations, epochs_seconds,
                                                                    strict=True)),
        "between_trials_s": (wall * count - sum(durations)) / len(study.trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="training overrides, e.g. trainer.device=cuda")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary, contextlib.chdir(temporary):
        for count in (1, 2, 3):
            result = run(count, args.trials, args.epochs, Path(temporary), args.extra)
            print(f"{count} worker(s): {result['trials_per_hour']:6.0f} trials/hour; per trial "
                  f"{result['epochs_s']:.2f} s of epochs, {result['rest_of_trial_s']:.2f} s "
                  f"else in the trial, {result['between_trials_s']:.2f} s between trials "
                  f"(storage, lock, start-up)", flush=True)


if __name__ == "__main__":
    main()
