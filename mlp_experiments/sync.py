"""`mlp-sync [folder] [--dry-run]`: send to MLflow every journal under a folder (default
./checkpoints, the default trainer.checkpoint_dir) whose records are not all there, or whose
run is not closed there: what an outage, a killed sender or a killed training left."""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path

from mlp_experiments import tracking


def unfinished(folder: Path) -> list[Path]:
    """The run folders under `folder` left to send, without those a live process writes
    (their own sender sends them)."""
    return [journal.parent for journal in sorted(folder.rglob(tracking.JOURNAL))
            if tracking.left_over(journal.parent)]


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlp-sync", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="checkpoints", type=Path,
                        help="where the runs' journals are (default: ./checkpoints)")
    parser.add_argument("--dry-run", action="store_true", help="list them, send nothing")
    args = parser.parse_args(arguments)
    if not args.folder.is_dir():
        raise SystemExit(f"error: {args.folder} is not a folder: name the trainer.checkpoint_dir "
                         f"of the runs to send (default ./checkpoints).")
    pending = unfinished(args.folder)
    print(f"{len(pending)} journal(s) to send under {args.folder}", flush=True)
    if args.dry_run:
        for folder in pending:
            print(f"  {folder}: {tracking.unsent(folder)} record(s) unsent", flush=True)
        return
    from mlp_experiments import sender

    os.environ.update(sender.FAIL_FAST)
    done = threading.Event()
    done.set()
    left = []
    for index, folder in enumerate(pending, start=1):
        print(f"[{index}/{len(pending)}] {folder}: {tracking.unsent(folder)} record(s)",
              flush=True)
        left += sender.follow([folder], done, grace_s=15)
    print(f"sent {len(pending) - len(left)} of {len(pending)} journal(s)")
    if left:
        raise SystemExit(f"error: {len(left)} journal(s) not sent: the store did not answer "
                         f"(see the warnings above); run mlp-sync again once it does.")


if __name__ == "__main__":
    main()
