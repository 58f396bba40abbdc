"""How often mlp-rerun's verdict is wrong, on fabricated metrics with known answers.

    uv run python benchmarks/rerun_verdicts.py [--trials 2000]

Each simulated run has 10 epochs of two metrics (an accuracy and a loss). A seed moves each
epoch's value by N(0, SEED_SD) (0.004: the seed-to-seed spread of the notes' runs is 0.3-0.8
points); a rerun of the same seed adds non-deterministic noise N(0, NOISE_SD) per epoch (0 on
the CPU; non-deterministic GPU kernels: 0.001-0.004 after a few epochs), and a real change
(another learning rate, an edited record) shifts every epoch by a few tenths of a point to one
point. rerun.compare judges each rerun, with the tolerance alone (a run without siblings) or
with the spread of 3 or 5 seeds of the original. Printed for each rule: how often a rerun with
no real change is called DIFFERS (false alarm, by the noise's size), and how often a real
change is not (miss, by the change's size, with 0.001 of noise).
"""

from __future__ import annotations

import argparse
import random

from mlp_experiments.rerun.verdict import compare

EPOCHS, SEED_SD, TOLERANCE = 10, 0.004, 0.005
NOISES, SHIFTS = (0.0, 0.001, 0.002, 0.004), (0.003, 0.005, 0.01)
BASE = {"val_acc": [0.80 + 0.008 * e for e in range(EPOCHS)],
        "val_loss": [0.55 - 0.015 * e for e in range(EPOCHS)]}


def seeded_run(draw: random.Random) -> dict[str, dict[int, float]]:
    return {name: {e + 1: v + draw.gauss(0, SEED_SD) for e, v in enumerate(values)}
            for name, values in BASE.items()}


def rerun_of(run: dict, draw: random.Random, noise: float, shift: float) -> dict:
    sign = {"val_acc": 1, "val_loss": -1}
    return {name: {e: v + draw.gauss(0, noise) + sign[name] * shift for e, v in steps.items()}
            for name, steps in run.items()}


def wrong_rate(seeds: int, noise: float, shift: float, trials: int, draw: random.Random) -> float:
    """The share of wrong verdicts: DIFFERS without a change, not DIFFERS with one."""
    wrong = 0
    for _ in range(trials):
        original = seeded_run(draw)
        siblings = [original, *(seeded_run(draw) for _ in range(seeds - 1))] if seeds > 1 else []
        verdict = compare(original, rerun_of(original, draw, noise, shift), siblings, TOLERANCE)
        wrong += (verdict.kind == "differs") != (shift != 0)
    return wrong / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    trials = parser.parse_args().trials
    draw = random.Random(0)
    print(f"{trials} simulated reruns per cell: the share of wrong verdicts\n")
    print(f"{'rule':<20} " + " ".join(f"{f'alarm sd {n}':>14}" for n in NOISES) + " "
          + " ".join(f"{f'miss +{d}':>11}" for d in SHIFTS))
    for seeds, rule in ((1, f"tolerance {TOLERANCE}"), (3, "3 seeds' spread"),
                        (5, "5 seeds' spread")):
        alarms = [wrong_rate(seeds, noise, 0.0, trials, draw) for noise in NOISES]
        misses = [wrong_rate(seeds, 0.001, shift, trials, draw) for shift in SHIFTS]
        print(f"{rule:<20} " + " ".join(f"{rate:>14.1%}" for rate in alarms) + " "
              + " ".join(f"{rate:>11.1%}" for rate in misses))


if __name__ == "__main__":
    main()
