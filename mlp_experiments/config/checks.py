"""The checks every composed training config passes before anything heavy is imported: the
`_target_` policy, values that cannot train, and combinations of data, model and loss that
cannot work together."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlp_experiments.config import policy
from mlp_experiments.config.schemas import DatasetName
from mlp_experiments.errors import UserError


@dataclass(frozen=True)
class LossKind:
    option: str  # the loss group option that selects it
    task: str  # classification, binary or regression
    takes: str  # what it reads from the model: logits, probabilities or values


LOSS_KINDS = {
    "torch.nn.CrossEntropyLoss": LossKind("cross_entropy", "classification", "logits"),
    "mlp_experiments.losses.LogSoftmaxNLL": LossKind("nll", "classification", "logits"),
    "mlp_experiments.losses.OneHotMSE": LossKind("mse_onehot", "classification", "logits"),
    "mlp_experiments.losses.ScratchCrossEntropy": LossKind(
        "scratch_cross_entropy", "classification", "probabilities"
    ),
    "mlp_experiments.losses.SigmoidBCE": LossKind("bce", "binary", "logits"),
    "torch.nn.L1Loss": LossKind("l1", "regression", "values"),
    "torch.nn.MSELoss": LossKind("mse", "regression", "values"),
    "torch.nn.SmoothL1Loss": LossKind("smooth_l1", "regression", "values"),
}


# The notes' hand-written networks end in their own softmax: they output probabilities.
PROBABILITY_MODELS = {"mlp_experiments.models.ScratchMLP", "mlp_experiments.models.ModelDemo"}
IMAGE_MODELS = {"mlp_experiments.models.CNN"}


def data_task(data: DictConfig) -> tuple[str, int]:
    """("regression", 1) or ("classification", number of classes) for a data config."""
    if data.name == DatasetName.regression:
        return "regression", 1
    if data.name == DatasetName.synthetic:
        return "classification", data.num_classes
    return "classification", len(data.classes) if data.classes else 10


def _has_images(data: DictConfig) -> bool:
    return data.name != DatasetName.regression and data.get("features") is None


def model_shape(cfg: DictConfig) -> tuple[int, int]:
    """(in_features, num_outputs) the data will give the model: 28x28 pixels or `features`;
    one output for regression and for a binary loss (a single logit), else one per class."""
    task, num_classes = data_task(cfg.data)
    kind = LOSS_KINDS.get(cfg.loss._target_)
    single = task == "regression" or (kind is not None and kind.task == "binary")
    return 28 * 28 if _has_images(cfg.data) else cfg.data.features, 1 if single else num_classes


def check_compatibility(cfg: DictConfig) -> None:
    """Combinations that cannot train fail here, before any data is read."""
    task, num_classes = data_task(cfg.data)
    kind = LOSS_KINDS.get(cfg.loss._target_)
    if kind is not None:
        if task == "regression" and kind.task != "regression":
            raise UserError(
                f"loss={kind.option} scores class labels (accuracy), but data=regression has "
                f"real-valued targets: use loss=l1, loss=mse or loss=smooth_l1."
            )
        if task != "regression" and kind.task == "regression":
            raise UserError(
                f"loss={kind.option} compares real values, but data={cfg.data.name} has class "
                f"labels: use loss=cross_entropy, nll or mse_onehot (or data=regression)."
            )
        if kind.task == "binary" and num_classes != 2:
            raise UserError(
                f"loss=bce is for two classes, but data={cfg.data.name} has {num_classes}: "
                f"keep two with data.classes (e.g. data.classes=[0,6]) or use loss=cross_entropy."
            )
        model_output = "probabilities" if cfg.model._target_ in PROBABILITY_MODELS else "logits"
        if (kind.takes == "probabilities") != (model_output == "probabilities"):
            raise UserError(
                f"model {cfg.model._target_} outputs {model_output} but loss={kind.option} "
                f"takes {kind.takes}: pair model=scratch_mlp or model_demo with "
                f"loss=scratch_cross_entropy, and every other model with the other losses."
            )
    if cfg.model._target_ in IMAGE_MODELS and not _has_images(cfg.data):
        raise UserError(
            f"model=cnn needs 28x28 images, but data={cfg.data.name} gives flat feature "
            f"vectors: use model=mlp."
        )


def check_values(cfg: DictConfig) -> None:
    """Values that are of the right type but cannot train, each with one message."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"These keys need a value: {', '.join(missing)}.")
    for key in ("trainer.epochs", "trainer.batch_size"):
        value = OmegaConf.select(cfg, key)
        if value < 1:
            raise UserError(f"{key}={value} must be at least 1.")
    lr = cfg.optimizer.get("lr")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UserError(f"optimizer.lr={lr} must be a finite number above 0 (e.g. 0.1).")
    hidden_sizes = list(cfg.model.get("hidden_sizes") or [])
    if any(size < 1 for size in hidden_sizes):
        raise UserError(f"model.hidden_sizes={hidden_sizes}: every layer needs at least 1 unit.")
    if "dropout" in cfg.model:
        check_dropout(cfg.model.dropout, len(hidden_sizes))
    task, num_classes = data_task(cfg.data)
    if task == "classification" and num_classes < 2:
        if cfg.data.name == DatasetName.synthetic:
            problem, fix = f"data.num_classes={num_classes}", "data.num_classes=2"
        else:
            problem, fix = f"data.classes={list(cfg.data.classes)}", "data.classes=[0,6]"
        raise UserError(f"{problem}: a classifier needs at least two classes, e.g. {fix}.")


def check_dropout(dropout: Any, layers: int) -> None:
    rates = list(dropout) if isinstance(dropout, ListConfig) else [dropout] * layers
    if len(rates) != layers or not all(_is_rate(rate) for rate in rates):
        shown = OmegaConf.to_container(dropout) if OmegaConf.is_config(dropout) else dropout
        raise UserError(
            f"model.dropout={shown!r} must be one rate in [0, 1) or a list of rates, one per "
            f"hidden layer ({layers} here), e.g. model.dropout=0.2."
        )


def _is_rate(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1


def validate(cfg: DictConfig) -> None:
    """The one check every path runs on a composed training config (train() first of all)."""
    policy.check_config(cfg)
    check_values(cfg)
    check_compatibility(cfg)
