"""The training loop: epochs over batches, evaluation, checkpoints, early stopping, divergence.

Everything that watches training (MLflow, a pruner, the progress display) hangs on the
`on_epoch` hook, so the loop stays one screen long and never imports those libraries.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlp_experiments.config import UserError

EpochHook = Callable[[int, dict[str, float]], None]
BatchWrapper = Callable[[Iterable, int, int], Iterable]

COMPLETED, EARLY_STOPPED, DIVERGED = "completed", "early_stopped", "diverged"


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    outcome: str = COMPLETED

    @property
    def best_val_acc(self) -> float:
        return max((m["val_acc"] for m in self.history), default=float("nan"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "trainer.device=cuda but no CUDA GPU is visible: use trainer.device=auto or cpu."
        )
    return torch.device(requested)


def _example_sum(loss: torch.Tensor, loss_fn: nn.Module, count: int) -> torch.Tensor:
    """The batch's summed per-example loss, whatever the loss's reduction."""
    summed = getattr(loss_fn, "reduction", "mean") == "sum"
    return loss.detach() if summed else loss.detach() * count


@torch.no_grad()
def evaluate(model: nn.Module, batches, loss_fn: nn.Module, autocast) -> tuple[float, float]:
    model.eval()
    loss_sum = correct = count = 0
    for images, labels in batches.epoch(0, 0):
        with autocast():
            logits = model(images)
            loss = loss_fn(logits, labels)
        loss_sum += _example_sum(loss, loss_fn, len(labels)).float()
        correct += (logits.argmax(dim=1) == labels).sum()
        count += len(labels)
    return float(loss_sum) / count, float(correct) / count


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model, optimizer, scheduler, history, extra: dict) -> None:
    """Write to a temporary file and rename it: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "history": history,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "extra": extra,
    }
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(
            f"Cannot resume from {path}: {error}. Delete it, or run without trainer.resume=true."
        ) from None


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
    loss_fn: nn.Module,
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

    `state` is a loaded checkpoint to resume from; `raw_model` is the uncompiled module whose
    state is saved when `model` is the output of torch.compile.
    """
    raw_model = raw_model or model
    result = FitResult(history=restore(state, raw_model, optimizer, scheduler) if state else [])
    device_type = next(model.parameters()).device.type
    autocast = (
        (lambda: torch.autocast(device_type, dtype=torch.bfloat16))
        if settings.precision == "bf16"
        else nullcontext
    )
    train = batches["train"]
    for epoch in range(len(result.history) + 1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device_type)
        correct = torch.zeros((), device=device_type, dtype=torch.long)
        for images, labels in wrap_batches(train.epoch(settings.seed, epoch), epoch, len(train)):
            with autocast():
                logits = model(images)
                loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += _example_sum(loss, loss_fn, len(labels)).float()
            correct += (logits.argmax(dim=1) == labels).sum()
        train_seconds = time.perf_counter() - started
        if scheduler is not None:
            scheduler.step()
        examples = train.num_examples
        metrics = {"train_loss": float(loss_sum) / examples, "train_acc": float(correct) / examples}
        for split in ("val", "test"):
            metrics[f"{split}_loss"], metrics[f"{split}_acc"] = evaluate(
                model, batches[split], loss_fn, autocast
            )
        metrics |= {
            "lr": lr,
            "epoch_time_s": time.perf_counter() - started,
            "samples_per_s": examples / train_seconds,
        }
        result.history.append(metrics)
        diverged = not math.isfinite(metrics["train_loss"])
        if settings.checkpoint and not diverged:
            save_checkpoint(
                settings.checkpoint, raw_model, optimizer, scheduler, result.history,
                settings.checkpoint_extra,
            )
        on_epoch(epoch, metrics)
        if diverged:
            result.outcome = DIVERGED
            break
        if should_stop_early(result.history, settings.patience):
            result.outcome = EARLY_STOPPED
            break
    return result


@torch.no_grad()
def predict(model: nn.Module, batches) -> np.ndarray:
    """Predicted class of every example of a non-shuffled split, in order."""
    model.eval()
    predictions = [model(images).argmax(dim=1).cpu() for images, _ in batches.epoch(0, 0)]
    return torch.cat(predictions).numpy()


def checkpoint_path(directory: str, config_hash: str) -> Path:
    """One checkpoint per exact configuration: the same command + trainer.resume=true finds it."""
    return Path(directory) / config_hash / "last.pt"
