"""Run, track, sweep and compare the MLP variants of five course notes (README.md).

The signals of a command, from its first line of Python (its imports take seconds): a Ctrl-C
while `mlp-train`, `mlp-sweep` or a sweep's worker process loads is held until the command's
handler is in place (errors.stop_on_signals), which stops it as a later one would, quietly,
with exit code 130, where Python would print a traceback from whichever import it cut. The
sender process ignores Ctrl-C, and Slurm's SIGTERM and SIGUSR1/2 before a time limit or a
requeue: they reach the whole job, and are the training process's to handle (it closes its run
in its journal). Nor does it load pandas, which MLflow imports only where it is installed.
"""

import os
import signal
import sys
from pathlib import Path

WORKER_VARIABLE = "MLP_EXPERIMENTS_SWEEP_WORKER"


def _command() -> str:
    """`mlp_experiments.train` for `python -m mlp_experiments.train`, `mlp-train` for the script."""
    argv = sys.orig_argv
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return Path(argv[1]).name if len(argv) > 1 else ""


held_signals: list[int] = []
_COMMAND = _command()
# A sweep's worker process (sweep/worker.py spawns it with this variable, for it alone).
_WORKER = "--multiprocessing-fork" in sys.orig_argv and os.environ.pop(WORKER_VARIABLE, None)
if (_WORKER or _COMMAND in ("mlp_experiments.train", "mlp_experiments.sweep", "mlp-train",
                            "mlp-sweep")) \
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not nohup's SIG_IGN
    signal.signal(signal.SIGINT, lambda signum, _frame: held_signals.append(signum))
elif _COMMAND == "mlp_experiments.sender":
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(_signum, signal.SIG_IGN)
    # MLflow imports without pandas (as its skinny install does) and shipping records needs
    # none: hidden, a sender starts 0.7 s of CPU and 50 MiB lighter (docs/performance.md).
    sys.modules["pandas"] = None
