"""One real comparison judged both ways: a fixed number of seeds against the race.

    uv run python benchmarks/racing_real.py [--sweep compare_schedulers] [--seeds 10]

Runs the shipped comparison twice on FashionMNIST, in a throw-away folder without MLflow: once
on `--seeds` fixed seeds per variant (a grid, judged as `mlp-report` judges a fixed design:
each variant against the best, paired t-tests, Holm), once raced (`race: {max_seeds: --seeds}`:
seeds handed out in rounds, report/racing.py). Both use seeds 0, 1, ...: on a CPU a seed gives
the same run in both, so the race sees the first seeds of the fixed design's data. Prints each
verdict list and each cost (trials, epochs, CPU-minutes; report/cost.py) and their ratio.
Target (benchmarks/racing.py, on simulated comparisons): the race agrees with the fixed
design and costs at most half of it.

The evidence, compare_schedulers with 10 seeds (2 workers on a 2-core machine): in
docs/tuned-comparisons.md, "One real comparison both ways".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from mlp_experiments.report.cost import total_cost
from mlp_experiments.report.markdown import comparison_summary
from mlp_experiments.sweep.command import run_sweep
from mlp_experiments.sweep.spec import SEED_KEY, SWEEPS_DIR, load_sweep


def sweep_files(name: str, seeds: int, folder: Path) -> dict[str, Path]:
    """The shipped sweep as a fixed design on `seeds` seeds and as a race capped at `seeds`."""
    shipped = OmegaConf.load(SWEEPS_DIR / f"{name}.yaml")
    fixed = OmegaConf.merge(shipped, {"study_name": f"{name}_fixed",
                                      "space": {SEED_KEY: f"range(0, {seeds})"}})
    raced = OmegaConf.merge(shipped, {"study_name": f"{name}_raced",
                                      "race": {"max_seeds": seeds}})
    raced.space.pop(SEED_KEY)
    files = {"fixed": folder / "fixed.yaml", "raced": folder / "raced.yaml"}
    OmegaConf.save(fixed, files["fixed"])
    OmegaConf.save(raced, files["raced"])
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="compare_schedulers")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary, contextlib.chdir(temporary):
        folder = Path(temporary)
        costs = {}
        for design, path in sweep_files(args.sweep, args.seeds, folder).items():
            study = run_sweep([f"sweep={path}", f"sweep.n_workers={args.workers}",
                               "tracking=none", f"trainer.checkpoint_dir={folder / 'ck'}"])
            sweep = load_sweep(str(path), [])
            costs[design] = total_cost(study, None)
            print(f"\n=== {design}: {costs[design].describe()}",
                  *comparison_summary(study, sweep), sep="\n", flush=True)
    print(f"\nraced / fixed: {costs['raced'].trials / costs['fixed'].trials:.0%} of the runs, "
          f"{costs['raced'].cpu_s / costs['fixed'].cpu_s:.0%} of the CPU time")


if __name__ == "__main__":
    main()
