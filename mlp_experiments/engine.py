"""The training loop: epochs over batches, evaluation, checkpoints, early stopping, divergence.

Everything that watches training (MLflow, a pruner, the progress display) hangs on the
`on_epoch` hook, so the loop stays one screen long and never imports those libraries.
"""

from __future__ import annotations

import io
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlp_experiments import locks
from mlp_experiments.errors import UserError
from mlp_experiments.losses import Scoring, predict_classes
from mlp_experiments.task import higher_is_better

EpochHook = Callable[[int, dict[str, float]], None]
BatchWrapper = Callable[[Iterable, int, int], Iterable]

COMPLETED, EARLY_STOPPED, DIVERGED = "completed", "early_stopped", "diverged"


class StopTraining(Exception):
    """Raised by an epoch hook (a pruner, say) to end the run after the current epoch, which is
    already recorded; `outcome` says why."""

    def __init__(self, outcome: str):
        super().__init__(outcome)
        self.outcome = outcome


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    outcome: str = COMPLETED
    run_id: str | None = None  # the MLflow run that recorded it, once it has reached MLflow
    journal: str | None = None  # the folder of the run's journal (tracking.run_folder)

    def best(self, metric: str, maximize: bool | None = None) -> float:
        """The best value of a metric over the epochs; unless told, the highest accuracy or the
        lowest anything else."""
        values = [m[metric] for m in self.history if math.isfinite(m[metric])]
        if not values:
            return float("nan")
        maximize = higher_is_better(metric) if maximize is None else maximize
        return max(values) if maximize else min(values)


@dataclass
class Objective:
    """What the loop minimises and how it scores the outputs."""

    loss_fn: nn.Module
    scoring: Scoring
    penalty: Callable[[], torch.Tensor] | None = None  # explicit L1/L2 terms on the weights

    def penalty_term(self, count: int) -> torch.Tensor | float:
        if self.penalty is None:
            return 0.0
        # The penalty belongs to every example: a summed loss carries it once per example.
        return self.penalty() * (count if self.summed else 1)

    @property
    def summed(self) -> bool:
        return getattr(self.loss_fn, "reduction", "mean") == "sum"

    def example_sum(self, loss: torch.Tensor, count: int) -> torch.Tensor:
        """The batch's data loss summed over its examples, whatever the reduction."""
        return loss.detach() if self.summed else loss.detach() * count


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_deterministic_algorithms(on: bool) -> None:
    """torch's deterministic kernels (an error where an op has none), and what CUDA needs for
    them: cuBLAS's fixed workspace, read when its first handle is made, and no cuDNN
    autotuning. A rerun of the same run on the same machine is then identical bit for bit."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "trainer.device=cuda but no CUDA GPU is visible: use trainer.device=auto or cpu."
        )
    return torch.device(requested)


@torch.no_grad()
def evaluate(model: nn.Module, batches, objective: Objective, autocast) -> dict[str, float]:
    """Mean data loss and the task's metrics over a whole split."""
    model.eval()
    loss_sum, sums = 0.0, 0.0
    for inputs, targets in batches.epoch(0, 0):
        with autocast():
            outputs = model(inputs)
            loss = objective.loss_fn(outputs, targets)
        loss_sum += objective.example_sum(loss, len(targets)).float()
        sums += objective.scoring.batch_sums(outputs, targets)
    count = batches.num_examples
    return {"loss": float(loss_sum) / count, **objective.scoring.finish(sums, count)}


# ---------------------------------------------------------------------------- checkpoints


def checkpoint_path(directory: str, config_hash: str) -> Path:
    """One checkpoint per exact configuration: the same command + trainer.resume=true finds it."""
    return Path(directory) / config_hash / "last.pt"


@contextmanager
def claim(checkpoint: Path) -> Iterator[None]:
    """Only one process trains a configuration at a time: a second one on the same checkpoint
    is refused at once instead of overwriting the first one's epochs."""
    try:
        with locks.file_lock(checkpoint.with_suffix(".lock"), wait=False):
            yield
    except locks.Locked as locked:
        raise UserError(
            f"Another process ({locked.holder}) is training this exact configuration right now "
            f"(checkpoint {checkpoint}). Wait for it to end, then run again with "
            f"trainer.resume=true to continue or reuse its result, or give this run its own "
            f"trainer.checkpoint_dir."
        ) from None


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file of this process and rename it: a crash never leaves a
    half-written checkpoint, and no two writers share a temporary file. A disk that refuses
    the write (full, over quota, read-only) is one message; the last checkpoint stays whole."""
    serialized = io.BytesIO()  # torch's writer reports a failed write without its OS error
    torch.save(state, serialized)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-",
                                             suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            file.write(serialized.getbuffer())
        os.replace(temporary, path)
    except OSError as error:
        raise UserError(
            f"Cannot write the checkpoint {path}: {error.strerror}. Free space there or set "
            f"trainer.checkpoint_dir to a folder with room, then run the same command with "
            f"trainer.resume=true: the last checkpoint written keeps every epoch before this "
            f"one."
        ) from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def training_state(model, optimizer, scheduler, history, extra: dict) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "history": history,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "extra": extra,
    }


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(
            f"Cannot resume from {path}: {error}. Delete it, or run without trainer.resume=true."
        ) from None


def mark_finished(path: Path, outcome: str) -> None:
    """Record in the checkpoint that its run ended and was recorded: resuming it does nothing."""
    if path.exists():
        state = load_checkpoint(path)
        state["extra"]["outcome"] = outcome
        save_checkpoint(path, state)


def restore(state: dict, model, optimizer, scheduler) -> list[dict[str, float]]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return list(state["history"])


# ---------------------------------------------------------------------------- the loop


@dataclass
class FitSettings:
    epochs: int
    seed: int
    patience: int = 0
    precision: str = "fp32"
    checkpoint: Path | None = None
    checkpoint_extra: dict = field(default_factory=dict)


def should_stop_early(history: list[dict[str, float]], patience: int) -> bool:
    if patience <= 0 or not history:
        return False
    best_epoch = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    return len(history) - 1 - best_epoch >= patience


def fit(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler,
    batches: dict,
    settings: FitSettings,
    on_epoch: EpochHook = lambda epoch, metrics: None,
    wrap_batches: BatchWrapper = lambda batches, epoch, total: batches,
    state: dict | None = None,
    raw_model: nn.Module | None = None,
) -> FitResult:
    """Train `model` on `batches["train"]`, evaluating on "val" and "test" after each epoch.

    `state` is a loaded checkpoint to resume from: its epochs go through `on_epoch` again
    first, so every watcher (the MLflow record, a pruner) has every epoch of a resumed run.
    `raw_model` is the uncompiled module whose state is saved when `model` is the output of
    torch.compile.
    """
    raw_model = raw_model or model
    result = FitResult(history=restore(state, raw_model, optimizer, scheduler) if state else [])
    device_type = next(model.parameters()).device.type
    autocast = (
        (lambda: torch.autocast(device_type, dtype=torch.bfloat16))
        if settings.precision == "bf16"
        else nullcontext
    )
    try:
        for epoch, metrics in enumerate(result.history, start=1):
            on_epoch(epoch, metrics)
        for epoch in range(len(result.history) + 1, settings.epochs + 1):
            metrics = train_epoch(model, objective, optimizer, scheduler, batches, epoch,
                                  settings.seed, wrap_batches, autocast)
            result.history.append(metrics)
            if not math.isfinite(metrics["train_loss"]):
                result.outcome = DIVERGED  # recorded, never checkpointed
                on_epoch(epoch, metrics)
                break
            if settings.checkpoint:  # before the hooks: what they record is always resumable
                save_checkpoint(settings.checkpoint, training_state(
                    raw_model, optimizer, scheduler, result.history, settings.checkpoint_extra))
            on_epoch(epoch, metrics)
            if should_stop_early(result.history, settings.patience):
                result.outcome = EARLY_STOPPED
                break
    except StopTraining as stop:
        if result.outcome != DIVERGED:
            result.outcome = stop.outcome
    return result


def train_epoch(model, objective: Objective, optimizer, scheduler, batches: dict, epoch: int,
                seed: int, wrap_batches: BatchWrapper, autocast) -> dict[str, float]:
    """One pass over the training batches, then the scheduler step and the evaluation of every
    split: the epoch's metrics."""
    started = time.perf_counter()
    device_type = next(model.parameters()).device.type
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    loss_sum = torch.zeros((), device=device_type)
    sums = torch.zeros(len(objective.scoring.names), device=device_type)
    train = batches["train"]
    for inputs, targets in wrap_batches(train.epoch(seed, epoch), epoch, len(train)):
        with autocast():
            outputs = model(inputs)
            data_loss = objective.loss_fn(outputs, targets)
        loss = data_loss + objective.penalty_term(len(targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += objective.example_sum(data_loss, len(targets))
        sums += objective.scoring.batch_sums(outputs, targets)
    train_seconds = time.perf_counter() - started
    if scheduler is not None:
        scheduler.step()
    metrics = {"train_loss": float(loss_sum) / train.num_examples}
    scores = objective.scoring.finish(sums, train.num_examples)
    metrics |= {f"train_{name}": value for name, value in scores.items()}
    for split in ("val", "test"):
        scores = evaluate(model, batches[split], objective, autocast)
        metrics |= {f"{split}_{name}": value for name, value in scores.items()}
    return metrics | {
        "lr": lr,
        "epoch_time_s": time.perf_counter() - started,
        "samples_per_s": train.num_examples / train_seconds,
    }


@torch.no_grad()
def predict(model: nn.Module, batches) -> np.ndarray:
    """Predicted class of every example of a non-shuffled split, in order."""
    model.eval()
    predictions = [predict_classes(model(inputs)).cpu() for inputs, _ in batches.epoch(0, 0)]
    return torch.cat(predictions).numpy()

