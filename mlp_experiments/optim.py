"""Optimizers and learning-rate schedulers from their `_partial_` configs."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float, decay_biases: bool) -> list[dict]:
    """Weight decay on the weight matrices only (or on every parameter with decay_biases):
    vectors such as biases and PReLU slopes are not what L2 regularisation is meant to shrink."""
    decayed, kept = [], []
    for parameter in model.parameters():
        (decayed if decay_biases or parameter.ndim > 1 else kept).append(parameter)
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    if kept:
        groups.append({"params": kept, "weight_decay": 0.0})
    return groups


def build_optimizer(optimizer_cfg, regularization_cfg, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(
        model, regularization_cfg.weight_decay, regularization_cfg.decay_biases
    )
    return instantiate(optimizer_cfg)(groups)


def build_scheduler(scheduler_cfg, optimizer: torch.optim.Optimizer):
    """None for `scheduler=none` (an empty group option): the learning rate stays constant."""
    if "_target_" not in scheduler_cfg:
        return None
    return instantiate(scheduler_cfg)(optimizer)
