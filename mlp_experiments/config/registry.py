"""Which schema each config group option takes: by option name (conf/<group>/<name>.yaml names
`/schema/<group>/<name>` in its defaults list) and by `_target_`, registered in Hydra's
ConfigStore."""

from __future__ import annotations

import typing

from hydra.core.config_store import ConfigStore

from mlp_experiments.config.choices import DatasetName
from mlp_experiments.config.schemas import (
    AdagradConfig,
    AdamConfig,
    BCEConfig,
    CNNConfig,
    CosineLRConfig,
    CrossEntropyConfig,
    ExponentialLRConfig,
    IdxDataConfig,
    L1Config,
    LossConfig,
    MLPConfig,
    ModelDemoConfig,
    MSEConfig,
    MultiStepLRConfig,
    NLLConfig,
    NoSchedulerConfig,
    OneHotMSEConfig,
    OptimizerConfig,
    RegressionDataConfig,
    RMSpropConfig,
    SchedulerConfig,
    ScratchCrossEntropyConfig,
    ScratchMLPConfig,
    ScratchSGDConfig,
    SGDConfig,
    SmoothL1Config,
    StepLRConfig,
    SyntheticDataConfig,
    TrainConfig,
)

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


def schemas_by_section() -> dict[str, list[type]]:
    """Every schema of each section of the training config."""
    hints = typing.get_type_hints(TrainConfig)
    return {section: list(SCHEMAS[section].values()) if section in SCHEMAS else [hints[section]]
            for section in hints}


def data_schema(name: DatasetName) -> type:
    """The generated datasets have their own schemas; FashionMNIST and MNIST share the IDX one."""
    return SCHEMAS["data"].get(str(name), IdxDataConfig)


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)
