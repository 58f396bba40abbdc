"""The checks every composed training config passes before anything heavy is imported: the
`_target_` policy, values that cannot train, and combinations of data, model and loss that
cannot work together."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlp_experiments.config import policy
from mlp_experiments.config.choices import DatasetName
from mlp_experiments.config.schemas import TARGET_SCHEMAS, LossConfig, ModelConfig
from mlp_experiments.errors import UserError
from mlp_experiments.task import Task


def loss_schema(cfg: DictConfig) -> type[LossConfig]:
    """The loss's schema, which says what it compares and takes (LossConfig: we do not know)."""
    return TARGET_SCHEMAS.get(cfg.loss._target_, LossConfig)


def model_schema(cfg: DictConfig) -> type[ModelConfig]:
    return TARGET_SCHEMAS.get(cfg.model._target_, ModelConfig)


def _has_images(data: DictConfig) -> bool:
    return data.name != DatasetName.regression and data.get("features") is None


def model_shape(cfg: DictConfig) -> tuple[int, int]:
    """(in_features, num_outputs) the data will give the model: 28x28 pixels or `features`;
    one output for regression and for a binary loss (a single logit), else one per class."""
    task = Task.of(cfg.data)
    single = task.regression or loss_schema(cfg).task == "binary"
    in_features = 28 * 28 if _has_images(cfg.data) else cfg.data.features
    return in_features, 1 if single else task.num_classes


def check_compatibility(cfg: DictConfig) -> None:
    """Combinations that cannot train fail here, before any data is read."""
    task, loss, model = Task.of(cfg.data), loss_schema(cfg), model_schema(cfg)
    if loss.task is not None:
        if task.regression and loss.task != "regression":
            raise UserError(
                f"loss={loss.option} scores class labels (accuracy), but data=regression has "
                f"real-valued targets: use loss=l1, loss=mse or loss=smooth_l1."
            )
        if not task.regression and loss.task == "regression":
            raise UserError(
                f"loss={loss.option} compares real values, but data={cfg.data.name} has class "
                f"labels: use loss=cross_entropy, nll or mse_onehot (or data=regression)."
            )
        if loss.task == "binary" and task.num_classes != 2:
            raise UserError(
                f"loss=bce is for two classes, but data={cfg.data.name} has "
                f"{task.num_classes}: keep two with data.classes (e.g. data.classes=[0,6]) or "
                f"use loss=cross_entropy."
            )
        if (loss.takes == "probabilities") != (model.outputs == "probabilities"):
            raise UserError(
                f"model {cfg.model._target_} outputs {model.outputs} but loss={loss.option} "
                f"takes {loss.takes}: pair model=scratch_mlp or model_demo with "
                f"loss=scratch_cross_entropy, and every other model with the other losses."
            )
    if model.needs_images and not _has_images(cfg.data):
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
    task = Task.of(cfg.data)
    if not task.regression and task.num_classes < 2:
        if cfg.data.name == DatasetName.synthetic:
            problem, fix = f"data.num_classes={task.num_classes}", "data.num_classes=2"
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
