"""Typed schemas for the Hydra config tree in `conf/`.

Every group option in `conf/` names its schema in its defaults list
(`- /schema/<group>/<name>@_here_`), so a wrong key or a value of the wrong type fails while
Hydra composes, with the key and the allowed values in the message.

Every numeric setting states its allowed range here, beside its field (`ranges.ranged`), and
nowhere else: `checks.check_ranges` checks each one before torch is imported, and
docs/bad-input.md lists them (`ranges.range_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

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
from mlp_experiments.config.ranges import SEED, SEED_WHY, above, at_least, between, ranged

# ---------------------------------------------------------------------------- schemas


@dataclass
class DataConfig:
    name: DatasetName = MISSING
    val_size: int = ranged(5000, at_least(1), example=500,
                           why="early stopping and the sweeps score the validation split")
    split_seed: int = ranged(0, SEED, why=SEED_WHY)
    loader: Loader = Loader.device
    normalize: Normalize = Normalize.none


@dataclass
class IdxDataConfig(DataConfig):
    root: str = "data"  # searched first; torchvision downloads here
    verify: bool = True  # MD5 of the decoded IDX files against the published release
    # keep these classes only, relabelled 0..k-1 (bce: two); both releases have classes 0-9
    classes: list[int] | None = ranged(None, between(0, 9), example=[0, 6], item="class")


TRAIN_WHY = "at least one is kept for validation (data.val_size)"


@dataclass
class SyntheticDataConfig(DataConfig):
    train_size: int = ranged(1200, at_least(2), why=TRAIN_WHY)
    test_size: int = ranged(400, at_least(1))
    seed: int = ranged(0, SEED, why=SEED_WHY)
    num_classes: int = ranged(10, at_least(2), why="a classifier needs at least two classes")
    # None: 28x28 uint8 images; n: n real-valued features
    features: int | None = ranged(None, at_least(1), example=10)


@dataclass
class RegressionDataConfig(DataConfig):
    train_size: int = ranged(4000, at_least(2), why=TRAIN_WHY)
    test_size: int = ranged(1000, at_least(1))
    seed: int = ranged(0, SEED, why=SEED_WHY)
    features: int = ranged(10, at_least(5), why="Friedman's problem uses the first five")
    noise: float = ranged(1.0, at_least(0))  # the standard deviation of the targets' noise


@dataclass
class ModelConfig:
    """What a model schema says of its class besides its arguments (see checks)."""

    outputs: ClassVar[str] = "logits"  # or "probabilities": the notes' own softmax networks
    needs_images: ClassVar[bool] = False  # True: 28x28 images, not flat feature vectors


LAYER_WIDTH = at_least(1)  # units in a hidden layer
INIT_STD = at_least(0)  # torch's normal_ takes std >= 0


@dataclass
class MLPConfig(ModelConfig):
    _target_: str = "mlp_experiments.models.MLP"
    hidden_sizes: list[int] = ranged([256], LAYER_WIDTH, item="layer")
    activation: Activation = Activation.relu
    # One rate for every hidden layer, or a list with one rate per layer. OmegaConf has no
    # Union type: check_dropout refuses anything but a float or a list of floats.
    dropout: Any = ranged(0.0, between(0, 1, high_open=True), example=0.2, item="rate")
    dropout_impl: DropoutImpl = DropoutImpl.nn
    init: Init = Init.normal  # note 000 draws every parameter from N(0, 0.01)
    init_std: float = ranged(0.01, INIT_STD)
    bias_init: BiasInit = BiasInit.normal


@dataclass
class ScratchMLPConfig(ModelConfig):
    _target_: str = "mlp_experiments.models.ScratchMLP"
    hidden_sizes: list[int] = ranged([256], LAYER_WIDTH, item="layer")
    init_std: float = ranged(0.01, INIT_STD)
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
    """An allowed torch optimizer without a schema of its own: its learning rate only. The
    other optimizer schemas add their settings (ranges as torch checks them) to it."""

    _target_: str = MISSING
    _partial_: bool = True
    lr: float = ranged(MISSING, above(0), example=0.1)


@dataclass
class ScratchSGDConfig(OptimizerConfig):
    _target_: str = "mlp_experiments.optim.ScratchSGD"
    batch_size: int = ranged(MISSING, at_least(1), example=256)


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    momentum: float = ranged(0.0, at_least(0), example=0.9)
    nesterov: bool = False


@dataclass
class AdagradConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adagrad"
    eps: float = ranged(1e-10, at_least(0))


@dataclass
class RMSpropConfig(OptimizerConfig):
    _target_: str = "torch.optim.RMSprop"
    # the decay of the running mean of squared gradients: torch checks alpha >= 0 only, but
    # above 1 the mean turns negative and its square root NaN
    alpha: float = ranged(0.99, between(0, 1))
    eps: float = ranged(1e-8, at_least(0))
    momentum: float = ranged(0.0, at_least(0), example=0.9)


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = MISSING  # torch.optim.Adam or torch.optim.AdamW
    betas: list[float] = ranged([0.9, 0.999], between(0, 1, high_open=True), item="beta")
    eps: float = ranged(1e-8, at_least(0))


@dataclass
class NoSchedulerConfig:
    pass


@dataclass
class SchedulerConfig:
    """An allowed torch scheduler without a schema of its own: its defaults only."""

    _target_: str = MISSING
    _partial_: bool = True


# The factor the learning rate is multiplied by (torch checks nothing; 0 or less is no rate).
GAMMA = above(0)


@dataclass
class StepLRConfig:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = ranged(MISSING, at_least(1), example=50)  # epochs
    gamma: float = ranged(MISSING, GAMMA, example=0.5)


@dataclass
class MultiStepLRConfig:
    _target_: str = "torch.optim.lr_scheduler.MultiStepLR"
    _partial_: bool = True
    # the epochs after which the rate drops: the scheduler first steps after epoch 1
    milestones: list[int] = ranged(MISSING, at_least(1), example=[50, 100, 160],
                                   item="milestone")
    gamma: float = ranged(MISSING, GAMMA, example=0.5)


@dataclass
class ExponentialLRConfig:
    _target_: str = "torch.optim.lr_scheduler.ExponentialLR"
    _partial_: bool = True
    gamma: float = ranged(MISSING, GAMMA, example=0.9)


@dataclass
class CosineLRConfig:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: int = ranged(MISSING, at_least(1), example=10)  # epochs
    eta_min: float = ranged(0.0, at_least(0))


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
    beta: float = ranged(1.0, at_least(0))  # torch refuses a negative beta


@dataclass
class RegularizationConfig:
    weight_decay: float = ranged(0.0, at_least(0), example=0.0005)  # through the optimizer
    decay_biases: bool = False  # False: weight decay and penalties on weight matrices only
    # lambda of lambda/2 * ||w||^2 added to the loss (note 004)
    l2_penalty: float = ranged(0.0, at_least(0), example=0.0005)
    l1_penalty: float = ranged(0.0, at_least(0), example=0.0001)  # lambda * |w|_1, added


@dataclass
class TrainerConfig:
    epochs: int = ranged(5, at_least(1))
    batch_size: int = ranged(256, at_least(1))
    seed: int = ranged(0, SEED, why=SEED_WHY)
    device: Device = Device.auto
    # early stopping: epochs without a better val_loss; 0 turns it off
    patience: int = ranged(0, at_least(0), example=3)
    resume: bool = False
    checkpoint_dir: str = "checkpoints"
    precision: Precision = Precision.fp32
    compile: bool = False
    # torch's deterministic algorithms: a rerun on the same machine is identical bit for bit
    # (docs/rerun.md: 3% per epoch on the CPU)
    deterministic: bool = False


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
