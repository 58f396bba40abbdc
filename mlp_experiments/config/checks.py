"""The checks every composed training config passes before anything heavy is imported: the
`_target_` policy, values that cannot train, and combinations of data, model and loss that
cannot work together."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlp_experiments.config import policy
from mlp_experiments.config.choices import DatasetName
from mlp_experiments.config.ranges import Range, ranges
from mlp_experiments.config.registry import TARGET_SCHEMAS
from mlp_experiments.config.schemas import IdxDataConfig, LossConfig, MLPConfig, ModelConfig
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
    if "dropout" in cfg.model:  # first: OmegaConf has no type to check it by (Any)
        check_dropout(cfg.model.dropout, len(cfg.model.get("hidden_sizes") or []))
    check_ranges(cfg)
    check_model_size(cfg)
    check_split(cfg.data)
    check_data_root(cfg.data)
    task = Task.of(cfg.data)
    if not task.regression and task.num_classes < 2:  # data.classes (num_classes has a range)
        raise UserError(f"data.classes={list(cfg.data.classes)}: a classifier needs at least two "
                        f"classes, e.g. data.classes=[0,6].")


def check_data_root(data: DictConfig) -> None:
    """A data.root the user gave must be a folder: discovery would otherwise train on another
    copy without a word."""
    default = IdxDataConfig.root
    if "root" in data and data.root != default and not Path(data.root).expanduser().is_dir():
        raise UserError(
            f"data.root={data.root} is not a folder. Point it at a folder with the four IDX "
            f"files (or torchvision's <root>/<Name>/raw/ layout), create it for torchvision to "
            f"download into, or drop it: the default "
            f"({default}/ under the working directory) is searched first, then mlp-fetch's cache "
            f"and Debian's dataset package."
        )


def check_ranges(cfg: DictConfig) -> None:
    """Every numeric setting in the range its schema states (ranges.ranged), a list's
    element by element."""
    for section, schema in policy.section_schemas(cfg).items():
        check_section_ranges(section, cfg[section], schema)


def check_section_ranges(section: str, node: DictConfig, schema: type) -> None:
    """The ranged fields of one section (a training config group, a command's settings)."""
    for name, allowed in ranges(schema).items():
        value = node[name]
        values = list(value) if isinstance(value, ListConfig) else [value]
        if value is not None and not all(number in allowed for number in values):
            raise UserError(out_of_range(f"{section}.{name}", value, allowed))


def out_of_range(key: str, value: Any, allowed: Range) -> str:
    """The one message for a value outside its range: the key, the value, the range and an
    example, e.g. "trainer.epochs=0 must be at least 1 (e.g. trainer.epochs=5)"."""
    if isinstance(value, ListConfig):
        rule = f": every {allowed.item} needs {allowed}"
    elif allowed.why:
        rule = f": {allowed.why}, so it must be {allowed}"
    else:
        rule = f" must be {allowed}"
    return f"{key}={value}{rule} (e.g. {key}={allowed.example})."


# The most parameters a model may have. 1e9 float32 weights are 4 GB, and training holds their
# gradients and up to two moments of the optimizer's (Adam) beside them: 16 GB, more than most
# GPUs hold, and some 750 times the largest model conf/ and sweeps/ train (784-1024-512-10,
# 1.3M parameters). Above it a typo (a width of 1000000000) fails here, not in an allocation
# minutes later that names no key.
MAX_PARAMETERS = 10**9


def parameter_count(cfg: DictConfig) -> int:
    """The parameters of an MLP's linear layers (weights and biases) on the data's shape."""
    in_features, num_outputs = model_shape(cfg)
    widths = [in_features, *cfg.model.hidden_sizes, num_outputs]
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in pairwise(widths))


def check_model_size(cfg: DictConfig) -> None:
    if "hidden_sizes" not in cfg.model:  # model_demo and cnn: a fixed, small size
        return
    count = parameter_count(cfg)
    if count > MAX_PARAMETERS:
        in_features, num_outputs = model_shape(cfg)
        raise UserError(
            f"model.hidden_sizes={cfg.model.hidden_sizes} makes a model of {count:,} parameters "
            f"({in_features} inputs, {num_outputs} outputs), above the {MAX_PARAMETERS:,} a "
            f"training may hold (4 GB of float32 weights, 16 GB with their gradients and "
            f"Adam's moments): use narrower layers, e.g. model.hidden_sizes=[256]."
        )


def check_split(data: DictConfig) -> None:
    """A generated dataset's validation split is carved from its training examples."""
    if "train_size" in data and data.val_size >= data.train_size:
        raise UserError(
            f"data.val_size={data.val_size} must be below data.train_size={data.train_size}: "
            f"the validation examples are taken from the training examples (e.g. "
            f"data.val_size={data.train_size // 5 or 1})."
        )


def check_dropout(dropout: Any, layers: int) -> None:
    allowed = ranges(MLPConfig)["dropout"]
    rates = list(dropout) if isinstance(dropout, ListConfig) else [dropout] * layers
    if len(rates) != layers or not all(_is_rate(rate, allowed) for rate in rates):
        shown = OmegaConf.to_container(dropout) if OmegaConf.is_config(dropout) else dropout
        raise UserError(
            f"model.dropout={shown!r} must be one rate in {allowed.interval} or a list of rates, "
            f"one per hidden layer ({layers} here), e.g. model.dropout={allowed.example}."
        )


def _is_rate(value: Any, allowed: Range) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value in allowed


def validate(cfg: DictConfig) -> None:
    """The one check every path runs on a composed training config (train() first of all)."""
    policy.check_config(cfg)
    check_values(cfg)
    check_compatibility(cfg)
