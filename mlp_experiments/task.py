"""What the data asks of a model, decided in one place: classification (with its number of
classes) or regression, the scores every epoch records, and which way each metric is better.
The config checks, the engine's scoring, `FitResult.best`, the sweep's metric check and the
report all ask a `Task`. Imports nothing heavy: the config checks use it before torch loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

SPLITS = ("train", "val", "test")
TIMINGS = ("epoch_time_s", "samples_per_s")  # measured, not results: no two runs share them
PER_EPOCH = ("lr", *TIMINGS)  # recorded each epoch besides the scores


@dataclass(frozen=True)
class Task:
    regression: bool
    num_classes: int  # 1 for regression

    @classmethod
    def of(cls, data: DictConfig) -> Task:
        """The task of a data config."""
        if data.name == "regression":
            return cls(regression=True, num_classes=1)
        if data.name == "synthetic":
            return cls(regression=False, num_classes=data.num_classes)
        return cls(regression=False, num_classes=len(data.classes) if data.classes else 10)

    @classmethod
    def of_history(cls, history: list[dict[str, float]]) -> Task:
        """The task a recorded run trained on, from the scores its epochs hold (the class count
        is not recorded there: 0)."""
        regression = bool(history) and "test_rmse" in history[-1]
        return cls(regression=regression, num_classes=1 if regression else 0)

    @property
    def scores(self) -> tuple[str, ...]:
        """What each split is scored by, besides its loss."""
        return ("mae", "rmse") if self.regression else ("acc",)

    @property
    def score(self) -> str:
        """The headline score: accuracy, or RMSE for regression."""
        return "rmse" if self.regression else "acc"

    @property
    def score_label(self) -> str:
        return "RMSE" if self.regression else "accuracy"

    @property
    def objective(self) -> str:
        """The metric a training is judged by (what Hydra's sweepers optimise)."""
        return f"val_{self.score}"

    @property
    def metrics(self) -> list[str]:
        """Every metric an epoch records."""
        names = [f"{split}_{score}" for split in SPLITS for score in ("loss", *self.scores)]
        return [*names, *PER_EPOCH]


def higher_is_better(metric: str) -> bool:
    """Accuracy is the one score where more is better; losses, errors and times are not."""
    return metric == "acc" or metric.endswith("_acc")


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take: an accuracy is a fraction; losses and errors are >= 0."""
    return (0.0, 1.0) if higher_is_better(metric) else (0.0, math.inf)
