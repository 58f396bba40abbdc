"""Optimizers and learning-rate schedulers from their `_partial_` configs, and the notes'
hand-written SGD."""

from __future__ import annotations

import torch
from torch import nn

from mlp_experiments.config import policy
from mlp_experiments.losses import is_penalized


class ScratchSGD(torch.optim.Optimizer):
    """Note 000's `sgd`: `p -= lr * p.grad / batch_size` for a loss summed over the batch (the
    divisor is the configured batch size, also for a smaller last batch, as in the notes).
    Weight decay, when configured, is added per example: `lr * weight_decay * p`."""

    def __init__(self, params, lr: float, batch_size: int, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    update = parameter.grad / group["batch_size"]
                    if group["weight_decay"]:
                        update = update + group["weight_decay"] * parameter
                    parameter -= group["lr"] * update

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroed by hand, as the notes do (`param.grad.data.zero_()`)."""
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.grad.zero_()


def parameter_groups(model: nn.Module, weight_decay: float, decay_biases: bool) -> list[dict]:
    decayed, kept = [], []
    for parameter in model.parameters():
        (decayed if is_penalized(parameter, decay_biases) else kept).append(parameter)
    groups = [{"params": decayed, "weight_decay": weight_decay},
              {"params": kept, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(optimizer_cfg, regularization_cfg, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(
        model, regularization_cfg.weight_decay, regularization_cfg.decay_biases
    )
    return policy.instantiate(optimizer_cfg)(groups)


def build_scheduler(scheduler_cfg, optimizer: torch.optim.Optimizer):
    """None for `scheduler=none` (an empty group option): the learning rate stays constant."""
    if "_target_" not in scheduler_cfg:
        return None
    return policy.instantiate(scheduler_cfg)(optimizer)
