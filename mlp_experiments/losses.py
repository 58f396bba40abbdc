"""Losses of the notes that torch does not ship as one module, the explicit weight penalties,
and how a model's outputs are scored (accuracy for classes, MAE and RMSE for real values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlp_experiments.task import Task


class LogSoftmaxNLL(nn.Module):
    """Note 001's two steps: log-softmax of the logits, then the negative log-likelihood."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(logits, dim=1), targets, reduction=self.reduction)


class OneHotMSE(nn.Module):
    """Squared error between softmax probabilities and one-hot targets, summed over classes."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        per_example = (logits.softmax(dim=1) - one_hot).pow(2).sum(dim=1)
        return reduce(per_example, self.reduction)


class SigmoidBCE(nn.Module):
    """Binary cross-entropy of sigmoid(output) against 0/1 labels, from the logit for
    numerical stability (the same value as BCELoss on the sigmoid's output)."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits.squeeze(1), targets.to(logits.dtype), reduction=self.reduction
        )


class ScratchCrossEntropy(nn.Module):
    """Note 000's hand-written cross-entropy on probabilities: -log(y_hat.gather(1, y))."""

    def __init__(self, reduction: str = "sum"):
        super().__init__()
        self.reduction = reduction

    def forward(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_example = -torch.log(probabilities.gather(1, targets.view(-1, 1))).squeeze(1)
        return reduce(per_example, self.reduction)


def reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_example.sum() if reduction == "sum" else per_example.mean()


def is_penalized(parameter: nn.Parameter, decay_biases: bool) -> bool:
    """Weight decay and penalties act on weight matrices and kernels, not on vectors such as
    biases and PReLU slopes, unless decay_biases."""
    return decay_biases or parameter.ndim > 1


def weight_penalty(model: nn.Module, l2: float, l1: float, decay_biases: bool) -> torch.Tensor:
    """l2 / 2 * ||w||^2 (note 004's l2_penalty) + l1 * |w|_1, added to the mean loss."""
    weights = [p for p in model.parameters() if is_penalized(p, decay_biases)]
    penalty = torch.zeros((), device=weights[0].device)
    if l2:
        penalty = penalty + l2 / 2 * sum(w.pow(2).sum() for w in weights)
    if l1:
        penalty = penalty + l1 * sum(w.abs().sum() for w in weights)
    return penalty


class Scoring:
    """Per-batch sums of a task's metric, finished into per-example figures each epoch."""

    def __init__(self, task: Task):
        self.regression = task.regression
        self.names = task.scores

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.regression:
            error = (outputs.detach() - targets).float()
            return torch.stack([error.abs().sum(), error.pow(2).sum()])
        return (predict_classes(outputs.detach()) == targets).sum().float().unsqueeze(0)

    def finish(self, sums: torch.Tensor, count: int) -> dict[str, float]:
        values = (sums / count).tolist()
        if self.regression:
            return {"mae": values[0], "rmse": values[1] ** 0.5}
        return {"acc": values[0]}


def predict_classes(outputs: torch.Tensor) -> torch.Tensor:
    """Argmax of the class scores; a single output is a binary logit, positive for class 1."""
    if outputs.shape[1] == 1:
        return (outputs.squeeze(1) > 0).long()
    return outputs.argmax(dim=1)
