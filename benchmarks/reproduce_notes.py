"""Every preset of conf/experiment/ that reproduces a result of the notes, trained for its whole
budget, against what the note reports.

    uv run python benchmarks/reproduce_notes.py [--only mnist_cnn ...]

FashionMNIST from Debian's package, MNIST from `mlp-fetch`'s cache; nothing is tracked. About
10 minutes on 2 CPU cores, most of it the CNN. The tests train the MNIST presets for 2 of their
10 epochs only (tests/test_e2e.py); this is the whole run, printed as one table.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from mlp_experiments.config.compose import compose_config
from mlp_experiments.train import train

# preset -> what its note reports (test accuracy at the end of the preset's epochs)
REPORTED = {
    "fashion_scratch_mlp": ("000", 0.832),
    "fashion_concise_mlp": ("000", 0.836),
    "fashion_d2l_mlp": ("004 (the d2l book: about 0.85)", 0.85),
    "fashion_dropout_mlp": ("004 (curves only)", None),
    "mnist_wide_mlp": ("002", 0.9801),
    "mnist_deep_mlp": ("003 (about)", 0.97),
    "mnist_cnn": ("003 (about)", 0.98),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(REPORTED), choices=list(REPORTED))
    presets = parser.parse_args().only
    print(f"{'preset':<22} {'epochs':>6} {'test acc':>9} {'note':<32} {'reported':>8} "
          f"{'minutes':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for preset in presets:
            cfg = compose_config([f"experiment={preset}", "tracking=none",
                                  f"trainer.checkpoint_dir={folder}"])
            started = time.perf_counter()
            result = train(cfg)
            note, reported = REPORTED[preset]
            print(f"{preset:<22} {len(result.history):>6} "
                  f"{result.history[-1]['test_acc']:>9.4f} {note:<32} "
                  f"{'-' if reported is None else f'{reported:.4f}':>8} "
                  f"{(time.perf_counter() - started) / 60:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
