"""Typed schemas for the Hydra config tree in `conf/`.

Every group option in `conf/` names its schema in its defaults list
(`- /schema/<group>/<name>@_here_`), so a wrong key or a value of the wrong type fails while
Hydra composes, with the key and the allowed values in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from mlp_experiments.config.choices import (
    Activation,
    BiasInit,
    DatasetName,
    Device,
    DropoutImpl,
    Init,
    Loader,
    Normalize,
    Precision,
    Reduction,
)


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
class ModelConfig:
    """What a model schema says of its class besides its arguments (see checks)."""

    outputs: ClassVar[str] = "logits"  # or "probabilities": the notes' own softmax networks
    needs_images: ClassVar[bool] = False  # True: 28x28 images, not flat feature vectors


@dataclass
class MLPConfig(ModelConfig):
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
class ScratchMLPConfig(ModelConfig):
    _target_: str = "mlp_experiments.models.ScratchMLP"
    hidden_sizes: list[int] = field(default_factory=lambda: [256])
    init_std: float = 0.01
    outputs: ClassVar[str] = "probabilities"


@dataclass
class ModelDemoConfig(ModelConfig):
    _target_: str = "mlp_experiments.models.ModelDemo"
    outputs: ClassVar[str] = "probabilities"


@dataclass
class CNNConfig(ModelConfig):
    _target_: str = "mlp_experiments.models.CNN"
    needs_images: ClassVar[bool] = True


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
    """An allowed loss; the schemas below say of each of ours what it compares (`task`:
    classification, binary or regression), what it takes from the model (`takes`: logits,
    probabilities or values) and which option of conf/loss/ selects it (see checks)."""

    _target_: str = MISSING
    reduction: Reduction = Reduction.mean
    task: ClassVar[str | None] = None
    takes: ClassVar[str | None] = None
    option: ClassVar[str | None] = None


@dataclass
class CrossEntropyConfig(LossConfig):
    option: ClassVar[str] = "cross_entropy"
    task: ClassVar[str] = "classification"
    takes: ClassVar[str] = "logits"


@dataclass
class NLLConfig(LossConfig):
    option: ClassVar[str] = "nll"
    task: ClassVar[str] = "classification"
    takes: ClassVar[str] = "logits"


@dataclass
class OneHotMSEConfig(LossConfig):
    option: ClassVar[str] = "mse_onehot"
    task: ClassVar[str] = "classification"
    takes: ClassVar[str] = "logits"


@dataclass
class ScratchCrossEntropyConfig(LossConfig):
    option: ClassVar[str] = "scratch_cross_entropy"
    task: ClassVar[str] = "classification"
    takes: ClassVar[str] = "probabilities"


@dataclass
class BCEConfig(LossConfig):
    option: ClassVar[str] = "bce"
    task: ClassVar[str] = "binary"
    takes: ClassVar[str] = "logits"


@dataclass
class L1Config(LossConfig):
    option: ClassVar[str] = "l1"
    task: ClassVar[str] = "regression"
    takes: ClassVar[str] = "values"


@dataclass
class MSEConfig(LossConfig):
    option: ClassVar[str] = "mse"
    task: ClassVar[str] = "regression"
    takes: ClassVar[str] = "values"


@dataclass
class SmoothL1Config(LossConfig):
    option: ClassVar[str] = "smooth_l1"
    task: ClassVar[str] = "regression"
    takes: ClassVar[str] = "values"
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
    "torch.nn.CrossEntropyLoss": CrossEntropyConfig,
    "mlp_experiments.losses.LogSoftmaxNLL": NLLConfig,
    "mlp_experiments.losses.OneHotMSE": OneHotMSEConfig,
    "mlp_experiments.losses.ScratchCrossEntropy": ScratchCrossEntropyConfig,
    "mlp_experiments.losses.SigmoidBCE": BCEConfig,
    "torch.nn.L1Loss": L1Config,
    "torch.nn.MSELoss": MSEConfig,
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
