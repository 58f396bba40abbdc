"""The same Optuna search with and without pruning on the real FashionMNIST.

    uv run python benchmarks/pruning.py [--trials 30] [--epochs 10]

Both arms run `sweeps/search_mlp.yaml`'s space with the same TPE seed, `--trials` trials of
`--epochs` epochs, in fresh throw-away storages; one with the median pruner, one without. It
prints the epochs each arm trained, their ratio, the best validation accuracy of each and the
wall time. Target: pruning trains <= 50% of the epochs and loses <= 0.3 points of accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from mlp_experiments.sweep.command import run_sweep

# The sweeps run in a throw-away working directory (their best presets): the data stays where
# the default data.root finds it from the directory the benchmark started in.
DATA_ROOT = Path("data").resolve()


def search(pruner: str, trials: int, epochs: int, folder: Path) -> tuple[int, float, float]:
    started = time.perf_counter()
    study = run_sweep([
        "sweep=search_mlp", f"sweep.study_name=pruning_{pruner}", f"sweep.pruner={pruner}",
        f"sweep.n_trials={trials}", f"sweep.storage=sqlite:///{folder / 'optuna.db'}",
        f"trainer.epochs={epochs}", "tracking=none", f"trainer.checkpoint_dir={folder / 'ck'}",
        f"data.root={DATA_ROOT}",
    ])
    epochs_trained = sum(len(t.user_attrs.get("history", [])) for t in study.trials
                         if "reused_from" not in t.user_attrs)
    return epochs_trained, study.best_value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        results = {pruner: search(pruner, args.trials, args.epochs, Path(folder))
                   for pruner in ("none", "median")}
    for pruner, (epochs, best, seconds) in results.items():
        print(f"pruner={pruner:6s} epochs trained {epochs:4d}  best val_acc {best:.4f}  "
              f"wall {seconds / 60:.1f} min")
    (full_epochs, full_best, _), (pruned_epochs, pruned_best, _) = results.values()
    print(f"epochs with pruning / without = {pruned_epochs / full_epochs:.2f}  (target <= 0.50)")
    print(f"best val_acc lost to pruning  = {(full_best - pruned_best) * 100:+.2f} points "
          f"(target <= 0.30)")


if __name__ == "__main__":
    main()
