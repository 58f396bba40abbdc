"""How often a comparison's "the same computation" verdict is wrong, on real trainings.

    uv run python benchmarks/same_computation.py [--seeds 12] [--epochs 3]

Two variants with the same final test score on every seed leave no spread to test. The report
calls them "the same computation" only when every metric of every epoch (timings aside) is
the same on every seed; equal final scores from trainings that differ are "a tie"
(report/markdown.py). The rule before it looked at the final scores alone (all at 1.0 or 0,
the end of the scale, aside: the test set cannot tell those apart). Both rules are applied
here to real trainings on the synthetic data (nothing tracked), every pair of variants, every
pair of seeds (a quickstart comparison runs 2 seeds each), at two test-set sizes: the smaller
the test set, the coarser its accuracy and the likelier a tie between different computations.

Truth: cross-entropy and log-softmax + NLL are one computation (torch's cross-entropy is
log-softmax then NLL); two optimizers are two.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile

from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from mlp_experiments.config.compose import compose_config
from mlp_experiments.report.markdown import comparison_sentence
from mlp_experiments.report.trials import Variant
from mlp_experiments.task import Task, metric_range
from mlp_experiments.train import train

# Each overrides one group of the defaults (cross-entropy, SGD at lr 0.5): `cross_entropy` is
# the defaults themselves, plain SGD.
VARIANTS = {"cross_entropy": "loss=cross_entropy", "nll": "loss=nll",
            "momentum": "optimizer=momentum", "adam": "optimizer=adam",
            "rmsprop": "optimizer=rmsprop", "adagrad": "optimizer=adagrad"}
SAME = {frozenset(("cross_entropy", "nll"))}
TEST_SIZES = (400, 20)


def trained(override: str, seed: int, test_size: int, epochs: int, folder: str) -> FrozenTrial:
    cfg = compose_config([override, "data=synthetic", f"data.test_size={test_size}",
                          "tracking=none", f"trainer.epochs={epochs}", f"trainer.seed={seed}",
                          f"trainer.checkpoint_dir={folder}"])
    history = train(cfg).history
    return create_trial(state=TrialState.COMPLETE, value=history[-1]["val_acc"],
                        params={"trainer.seed": seed}, user_attrs={"history": history},
                        distributions={"trainer.seed": IntDistribution(0, seed)})


def verdicts(a: Variant, b: Variant, task: Task) -> tuple[bool, bool]:
    """(old rule, report's rule): is the pair called the same computation?"""
    scores = a.test_by_seed(task)
    same_scores = scores == b.test_by_seed(task)
    end_of_scale = set(scores.values()) <= set(metric_range(task.score))
    sentence = comparison_sentence(a, b, None, task) if same_scores else ""
    return same_scores and not end_of_scale, "the same computation" in sentence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=1)  # more saturate: 1.0 on every seed
    args = parser.parse_args()
    task = Task(regression=False, num_classes=10)
    logging.getLogger("mlp_experiments").setLevel(logging.WARNING)  # a line per epoch, 1000s
    print(f"{len(VARIANTS)} variants x {args.seeds} seeds x {args.epochs} epochs, synthetic "
          f"data; each pair of variants judged on every pair of seeds\n")
    print(f"{'test set':>8}  {'pairs of variants':<28} {'judged':>7} "
          f"{'before: finals alone':>26} {'report':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for test_size in TEST_SIZES:
            print(f"training {len(VARIANTS) * args.seeds} runs, {test_size} test examples...",
                  end="\r", flush=True)
            runs = {name: [trained(override, seed, test_size, args.epochs, folder)
                           for seed in range(args.seeds)] for name, override in VARIANTS.items()}
            counts = {kind: [0, 0, 0] for kind in ("the same computation", "different methods")}
            for (name_a, a), (name_b, b) in itertools.combinations(runs.items(), 2):
                same = frozenset((name_a, name_b)) in SAME
                kind = "the same computation" if same else "different methods"
                for seeds in itertools.combinations(range(args.seeds), 2):
                    old, new = verdicts(Variant(name_a, [a[s] for s in seeds]),
                                        Variant(name_b, [b[s] for s in seeds]), task)
                    counts[kind] = [counts[kind][0] + 1, counts[kind][1] + old,
                                    counts[kind][2] + new]
            for kind, (judged, old, new) in counts.items():
                print(f"{test_size:>8}  {kind:<28} {judged:>7} {old / judged:>26.1%} "
                      f"{new / judged:>7.1%}", flush=True)
    print("\nWrong: a row of different methods called the same, or the same computation not "
          "called so. Pairs of seeds share seeds, so the rows' shares are rates, not "
          "independent trials.")


if __name__ == "__main__":
    main()
