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


@dataclass
class IdxDataConfig(DataConfig):
    root: str = "data"  # searched first; torchvision downloads here
    verify: bool = True  # MD5 of the decoded IDX files against the published release


@dataclass
class SyntheticDataConfig(DataConfig):
    train_size: int = 1200
    test_size: int = 400
    seed: int = 0


@dataclass
class MLPConfig:
    _target_: str = "mlp_experiments.models.MLP"
    hidden_sizes: list[int] = field(default_factory=lambda: [256])
    activation: Activation = Activation.relu
    dropout: float = 0.0
    init: Init = Init.default
    init_std: float = 0.01
    zero_bias: bool = False


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = MISSING
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
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
class CrossEntropyConfig:
    _target_: str = "torch.nn.CrossEntropyLoss"
    reduction: Reduction = Reduction.mean


@dataclass
class RegularizationConfig:
    weight_decay: float = 0.0
    decay_biases: bool = False  # False: decay weights only, as weight decay is usually meant


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
    "data": {"idx": IdxDataConfig, "synthetic": SyntheticDataConfig},
    "model": {"mlp": MLPConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig},
    "scheduler": {
        "none": NoSchedulerConfig,
        "step": StepLRConfig,
        "multistep": MultiStepLRConfig,
        "exponential": ExponentialLRConfig,
    },
    "loss": {"cross_entropy": CrossEntropyConfig},
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
    check_targets(cfg)
    return cfg
