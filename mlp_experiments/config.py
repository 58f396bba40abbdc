"""Typed schemas for the Hydra config tree in `conf/`, and the checks made before any heavy import.

Every group option in `conf/` names its schema in its defaults list
(`- /schema/<group>/<name>@_here_`), so a wrong key or a value of the wrong type fails while
Hydra composes, with the key and the allowed values in the message. This module imports only
Hydra and OmegaConf: a config mistake is answered before torch and mlflow are loaded.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
ALLOWED_TARGET_PREFIXES = ("torch.optim.", "torch.nn.", "mlp_experiments.")


class UserError(Exception):
    """A mistake in the input (config, data, tracking server): its message says how to fix it."""


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Loader(StrEnum):
    device = "device"  # decoded once, batched on the training device
    torch = "torch"  # the notes' DataLoader + ToTensor, one PIL image at a time


class DatasetName(StrEnum):
    fashion_mnist = "fashion_mnist"
    mnist = "mnist"
    synthetic = "synthetic"
    regression = "regression"


class Normalize(StrEnum):
    none = "none"  # pixels in [0, 1], as ToTensor gives them
    mnist = "mnist"  # (x - 0.1307) / 0.3081, the MNIST statistics note 003 uses
    computed = "computed"  # mean and std of the training images


class Activation(StrEnum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    leaky_relu = "leaky_relu"
    prelu = "prelu"
    softplus = "softplus"
    elu = "elu"
    gelu = "gelu"


class Init(StrEnum):
    default = "default"  # whatever torch.nn.Linear does
    normal = "normal"  # N(0, init_std), the notes' choice
    xavier_normal = "xavier_normal"
    xavier_uniform = "xavier_uniform"
    kaiming_normal = "kaiming_normal"
    kaiming_uniform = "kaiming_uniform"


class BiasInit(StrEnum):
    default = "default"  # torch.nn.Linear's own
    zeros = "zeros"
    normal = "normal"  # N(0, init_std) like the weights (note 000's concise MLP)


class DropoutImpl(StrEnum):
    nn = "nn"  # torch.nn.Dropout
    scratch = "scratch"  # the notes' mask = rand > p; x * mask / (1 - p)


class Reduction(StrEnum):
    mean = "mean"
    sum = "sum"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast of the forward pass


@dataclass
class DataConfig:
    name: DatasetName = MISSING
    val_size: int = 5000
    split_seed: int = 0
    loader: Loader = Loader.device
    normalize: Normalize = Normalize.none


@dataclass
class IdxDataConfig(DataConfig):
    root: str = "data"  # searched first; torchvision downloads here
    verify: bool = True  # MD5 of the decoded IDX files against the published release
    classes: list[int] | None = None  # keep these classes only, relabelled 0..k-1 (bce: two)


@dataclass
class SyntheticDataConfig(DataConfig):
    train_size: int = 1200
    test_size: int = 400
    seed: int = 0
    num_classes: int = 10
    features: int | None = None  # None: 28x28 uint8 images; n: n real-valued features


@dataclass
class RegressionDataConfig(DataConfig):
    train_size: int = 4000
    test_size: int = 1000
    seed: int = 0
    features: int = 10
    noise: float = 1.0


@dataclass
class MLPConfig:
    _target_: str = "mlp_experiments.models.MLP"
    hidden_sizes: list[int] = field(default_factory=lambda: [256])
    activation: Activation = Activation.relu
    dropout: Any = 0.0  # one rate for every hidden layer, or a list with one rate per layer
    dropout_impl: DropoutImpl = DropoutImpl.nn
    init: Init = Init.default
    init_std: float = 0.01
    bias_init: BiasInit = BiasInit.default


@dataclass
class ScratchMLPConfig:
    _target_: str = "mlp_experiments.models.ScratchMLP"
    hidden_sizes: list[int] = field(default_factory=lambda: [256])
    init_std: float = 0.01


@dataclass
class ModelDemoConfig:
    _target_: str = "mlp_experiments.models.ModelDemo"


@dataclass
class CNNConfig:
    _target_: str = "mlp_experiments.models.CNN"


@dataclass
class ScratchSGDConfig:
    _target_: str = "mlp_experiments.optim.ScratchSGD"
    _partial_: bool = True
    lr: float = MISSING
    batch_size: int = MISSING


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = MISSING
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdagradConfig:
    _target_: str = "torch.optim.Adagrad"
    _partial_: bool = True
    lr: float = MISSING
    eps: float = 1e-10


@dataclass
class RMSpropConfig:
    _target_: str = "torch.optim.RMSprop"
    _partial_: bool = True
    lr: float = MISSING
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0


@dataclass
class AdamConfig:
    _target_: str = MISSING  # torch.optim.Adam or torch.optim.AdamW
    _partial_: bool = True
    lr: float = MISSING
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class NoSchedulerConfig:
    pass


@dataclass
class StepLRConfig:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = MISSING
    gamma: float = MISSING


@dataclass
class MultiStepLRConfig:
    _target_: str = "torch.optim.lr_scheduler.MultiStepLR"
    _partial_: bool = True
    milestones: list[int] = MISSING
    gamma: float = MISSING


@dataclass
class ExponentialLRConfig:
    _target_: str = "torch.optim.lr_scheduler.ExponentialLR"
    _partial_: bool = True
    gamma: float = MISSING


@dataclass
class CosineLRConfig:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: int = MISSING
    eta_min: float = 0.0


@dataclass
class LossConfig:
    _target_: str = MISSING
    reduction: Reduction = Reduction.mean


@dataclass
class SmoothL1Config(LossConfig):
    beta: float = 1.0


@dataclass
class RegularizationConfig:
    weight_decay: float = 0.0  # through the optimizer
    decay_biases: bool = False  # False: weight decay and penalties on weight matrices only
    l2_penalty: float = 0.0  # lambda of lambda/2 * ||w||^2 added to the loss (note 004)
    l1_penalty: float = 0.0  # lambda of lambda * |w|_1 added to the loss


@dataclass
class TrainerConfig:
    epochs: int = 5
    batch_size: int = 256
    seed: int = 0
    device: Device = Device.auto
    patience: int = 0  # early stopping: epochs without a better val_loss; 0 turns it off
    resume: bool = False
    checkpoint_dir: str = "checkpoints"
    precision: Precision = Precision.fp32
    compile: bool = False


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "mlp-experiments"
    run_name: str | None = None
    log_model: bool = True
    system_metrics: bool = False  # CPU, memory (and GPU) every few seconds, as MLflow does


@dataclass
class TrainConfig:
    data: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loss: Any = MISSING
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SCHEMAS = {
    "data": {
        "idx": IdxDataConfig,
        "synthetic": SyntheticDataConfig,
        "regression": RegressionDataConfig,
    },
    "model": {
        "mlp": MLPConfig,
        "scratch_mlp": ScratchMLPConfig,
        "model_demo": ModelDemoConfig,
        "cnn": CNNConfig,
    },
    "optimizer": {
        "scratch_sgd": ScratchSGDConfig,
        "sgd": SGDConfig,
        "adagrad": AdagradConfig,
        "rmsprop": RMSpropConfig,
        "adam": AdamConfig,
    },
    "scheduler": {
        "none": NoSchedulerConfig,
        "step": StepLRConfig,
        "multistep": MultiStepLRConfig,
        "exponential": ExponentialLRConfig,
        "cosine": CosineLRConfig,
    },
    "loss": {"loss": LossConfig, "smooth_l1": SmoothL1Config},
}


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


def check_targets(cfg: Any, path: str = "") -> None:
    """A config is data, not code: `_target_` may only name our own or torch's classes."""
    if isinstance(cfg, DictConfig):
        target = cfg.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
            raise UserError(
                f"{path}._target_ = {target!r} is not allowed: a config may only build classes "
                f"under {', '.join(p.rstrip('.') for p in ALLOWED_TARGET_PREFIXES)}."
            )
        for key, value in cfg.items():
            check_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(cfg, ListConfig):
        for index, value in enumerate(cfg):
            check_targets(value, f"{path}[{index}]")


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


def validate(cfg: DictConfig) -> None:
    check_targets(cfg)
    check_compatibility(cfg)


def config_hash(cfg: DictConfig, data_digest: str) -> str:
    """Identifies the exact configuration: the part of the resolved config that decides the
    result (not where it is recorded, where the data lies or whether it resumes) and the data."""
    view = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    view.pop("tracking", None)
    view["trainer"].pop("resume", None)
    view["trainer"].pop("checkpoint_dir", None)
    view["data"].pop("root", None)
    text = json.dumps(view, sort_keys=True)
    return hashlib.sha256(f"{text}|{data_digest}".encode()).hexdigest()[:16]


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_UNKNOWN_KEY = re.compile(r"Key '([^']+)' not in '[^']+'\s+full_key: (\S+)")


def explain_unknown_key(message: str, cfg: DictConfig | None) -> str:
    """Add the keys that do exist (and the nearest one) to Hydra's 'Key ... not in' message."""
    match = _UNKNOWN_KEY.search(message)
    if not match or cfg is None:
        return message
    key, full_key = match.groups()
    parent = full_key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return message
    valid = [str(k) for k in node if not str(k).startswith("_")]
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
    return (
        f"Unknown config key '{full_key}'.{hint}\n"
        f"Keys under '{parent or '<root>'}': {', '.join(valid)}"
    )


def _with_causes(error: BaseException) -> str:
    lines = [str(error)]
    while error.__cause__ is not None:
        error = error.__cause__
        lines.append(str(error))
    return "\n".join(lines)


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The training config for these overrides, composed as `python -m mlp_experiments.train`
    would (for tests, benchmarks and sweeps, which run trainings in-process)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def check_overrides(overrides: list[str]) -> DictConfig:
    """Compose the config once with the user's overrides and raise UserError on any mistake,
    with the allowed keys spelled out. Costs a fraction of a second, saves a torch import."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        cfg = compose_config(job_overrides)
    except (HydraException, OmegaConfBaseException) as error:
        groups = [o for o in job_overrides if "=" in o and "." not in o.split("=")[0]]
        try:
            base = compose_config(groups)
        except (HydraException, OmegaConfBaseException):
            base = None
        raise UserError(explain_unknown_key(_with_causes(error), base)) from None
    validate(cfg)
    return cfg
