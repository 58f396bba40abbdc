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
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_GROUPS = frozenset(path.name for path in CONF_DIR.iterdir() if path.is_dir())


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
    # One rate for every hidden layer, or a list with one rate per layer. OmegaConf has no
    # Union type: check_values refuses anything but a float or a list of floats.
    dropout: Any = 0.0
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
class OptimizerConfig:
    """An allowed torch optimizer without a schema of its own: its learning rate only."""

    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING


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
class SchedulerConfig:
    """An allowed torch scheduler without a schema of its own: its defaults only."""

    _target_: str = MISSING
    _partial_: bool = True


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
    plots: bool = True  # learning curves, confusion matrix, test predictions (sweeps: best trials)
    log_model: bool = False  # the served MLflow model (the state dict is always logged)
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
        "any": OptimizerConfig,
    },
    "scheduler": {
        "none": NoSchedulerConfig,
        "any": SchedulerConfig,
        "step": StepLRConfig,
        "multistep": MultiStepLRConfig,
        "exponential": ExponentialLRConfig,
        "cosine": CosineLRConfig,
    },
    "loss": {"loss": LossConfig, "smooth_l1": SmoothL1Config},
}
# The schema a group node is checked against once its `_target_` is known (policy.check_config);
# an allowed class missing here is checked against its group's generic schema.
TARGET_SCHEMAS = {
    "mlp_experiments.models.MLP": MLPConfig,
    "mlp_experiments.models.ScratchMLP": ScratchMLPConfig,
    "mlp_experiments.models.ModelDemo": ModelDemoConfig,
    "mlp_experiments.models.CNN": CNNConfig,
    "mlp_experiments.optim.ScratchSGD": ScratchSGDConfig,
    "torch.optim.SGD": SGDConfig,
    "torch.optim.Adagrad": AdagradConfig,
    "torch.optim.RMSprop": RMSpropConfig,
    "torch.optim.Adam": AdamConfig,
    "torch.optim.AdamW": AdamConfig,
    "torch.optim.lr_scheduler.StepLR": StepLRConfig,
    "torch.optim.lr_scheduler.MultiStepLR": MultiStepLRConfig,
    "torch.optim.lr_scheduler.ExponentialLR": ExponentialLRConfig,
    "torch.optim.lr_scheduler.CosineAnnealingLR": CosineLRConfig,
    "torch.nn.SmoothL1Loss": SmoothL1Config,
}
ANY_TARGET_SCHEMAS = {"optimizer": OptimizerConfig, "scheduler": SchedulerConfig,
                      "loss": LossConfig}


def data_schema(name: DatasetName) -> type:
    """The generated datasets have their own schemas; FashionMNIST and MNIST share the IDX one."""
    return SCHEMAS["data"].get(str(name), IdxDataConfig)


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


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
    from mlp_experiments import policy  # it builds on this module's schemas

    policy.check_config(cfg)
    check_values(cfg)
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


@contextmanager
def hydra_initialized(config_dir: Path = CONF_DIR, extra_dir: str | Path | None = None):
    """Hydra initialised on `config_dir` and, as `--config-dir` adds it, `extra_dir`."""
    from hydra import initialize_config_dir
    from hydra._internal.hydra import Hydra
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        if extra_dir is not None:
            extra = Path(extra_dir).resolve()
            if not extra.is_dir():
                raise UserError(f"--config-dir {extra_dir}: no such folder.")
            search_path = GlobalHydra.instance().hydra.config_loader.config_search_path
            search_path.prepend(provider="command-line", path=f"file://{extra}",
                                anchor=SearchPathQuery(provider="schema"))
            GlobalHydra.instance().clear()
            Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)
        yield


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train",
                   config_dir: Path = CONF_DIR, extra_dir: str | Path | None = None,
                   return_hydra_config: bool = False) -> DictConfig:
    """The training config for these overrides, composed as `python -m mlp_experiments.train`
    would (for tests, benchmarks and sweeps, which run trainings in-process); `config_name`,
    `config_dir` and `extra_dir` are the command line's -cn, -cp and -cd."""
    from hydra import compose

    with hydra_initialized(config_dir, extra_dir):
        return compose(config_name, overrides=list(overrides),
                       return_hydra_config=return_hydra_config)


def with_values(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A copy of a composed config with `key=value` overrides applied as Hydra applies them
    after composing: the same result as composing with them, without reading the config tree
    again (a sweep composes each choice of config groups once and its trials' values on it)."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = copy.deepcopy(cfg)
    ConfigLoaderImpl._apply_overrides_to_config(
        OverridesParser.create().parse_overrides(overrides), cfg)
    return cfg


def check_overrides(overrides: list[str], config_name: str = "train",
                    config_dir: Path = CONF_DIR, extra_dir: str | Path | None = None) -> DictConfig:
    """Compose the config once with the user's overrides and raise UserError on any mistake,
    with the allowed keys spelled out, and on anything that is code rather than data. Returns
    the job's config. Costs a fraction of a second, saves a torch import."""
    return _checked(list(overrides), config_name, config_dir, extra_dir)[0]


def _checked(overrides: list[str], *where: Any) -> tuple[DictConfig, DictConfig]:
    """(job config, Hydra node), both checked; `where` is compose_config's."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mlp_experiments import policy  # it builds on this module's schemas

    policy.check_hydra_overrides(overrides)
    try:
        cfg = compose_config(overrides, *where, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        groups = [o for o in overrides if "=" in o and "." not in o.split("=")[0]]
        try:
            base = compose_config(groups, *where)
        except (HydraException, OmegaConfBaseException):
            base = None
        raise UserError(explain_unknown_key(_with_causes(error), base)) from None
    hydra = cfg.hydra
    policy.check_hydra_config(hydra)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        validate(cfg)
    except OmegaConfBaseException as error:  # e.g. a --config-path primary config without a group
        raise UserError(_with_causes(error)) from None
    return cfg, hydra


def check_command_line(overrides: list[str], config_name: str = "train",
                       config_dir: Path = CONF_DIR, extra_dir: str | Path | None = None) -> None:
    """Every job a Hydra command line can start passes check_overrides: each value of each
    sweep (`-m key=a,b`, and the sweeper's own `hydra.sweeper.params`) with the first value of
    the others. Checking train()'s config is not enough: Hydra sets a job's logging and
    environment from its Hydra node before train() runs."""
    where = (config_name, config_dir, extra_dir)
    first = one_value_each(overrides, config_dir, extra_dir)[0]
    hydra = _checked(first, *where)[1]
    params = [f"{key}={value}" for key, value in (hydra.sweeper.get("params") or {}).items()]
    for job in one_value_each([*params, *overrides], config_dir, extra_dir):
        if job != first:
            _checked(job, *where)


def one_value_each(overrides: list[str], config_dir: Path = CONF_DIR,
                   extra_dir: str | Path | None = None) -> list[list[str]]:
    """The overrides with the first value of every sweep, then, for each further value of each
    sweep, the same with that value instead (Hydra's parser expands choices, ranges and globs
    of group options)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    with hydra_initialized(config_dir, extra_dir):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        try:
            values = [
                [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
                if o.is_sweep_override() else [o.input_line]
                for o in parser.parse_overrides(list(overrides))
            ]
        except HydraException as error:
            raise UserError(str(error)) from None
    first = [choices[0] for choices in values]
    jobs = [first]
    for index, choices in enumerate(values):
        jobs += [[*first[:index], value, *first[index + 1:]] for value in choices[1:]]
    return jobs
