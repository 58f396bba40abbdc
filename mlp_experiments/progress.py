"""What a person watching the terminal sees: a live bar per epoch on a terminal, and one line
per epoch always (the only output when stdout is a file or a CI log)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

log = logging.getLogger("mlp_experiments")


class Progress:
    def __init__(self, epochs: int, live: bool | None = None):
        self.epochs = epochs
        self.live = sys.stdout.isatty() if live is None else live

    def wrap_batches(self, batches: Iterable, epoch: int, total: int) -> Iterable:
        if not self.live:
            return batches
        from rich.progress import track

        return track(batches, total=total, description=f"epoch {epoch}/{self.epochs}",
                     transient=True)

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        scores = "  ".join(
            f"{name} {value:.4f}" for name, value in metrics.items()
            if name.startswith(("train_", "val_", "test_")) and name != "val_loss"
        )
        log.info("epoch %d/%d  %s  lr %.3g  %.1fs  %.0f samples/s", epoch, self.epochs, scores,
                 metrics["lr"], metrics["epoch_time_s"], metrics["samples_per_s"])
