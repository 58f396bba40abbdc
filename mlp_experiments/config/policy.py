"""A config is data, never code: which classes a config may build, where, and how.

Hydra resolves a `_target_` by attribute lookup through any module a package file imports
(`mlp_experiments.engine.os.system` is `os.system`) and builds nested `_target_` nodes on its
own, so a string prefix is no check. Here:
* each config group that builds an object (model, optimizer, scheduler, loss) has an exact
  allow-list of classes, written as data so the check runs before torch is imported;
* `_target_` and `_partial_` are allowed only at the root of those groups, no other key may
  start with `_` (`_recursive_`, `_args_`, `_convert_`, ...), and every node holds only the keys
  of its schema (`+model.extra=...` is refused);
* `instantiate` builds one group's object from the very class the allow-list names, never
  recursively;
* `${oc.decode:...}` and `${oc.create:...}`, which build nodes out of strings after these checks,
  are refused in every process that imports this module;
* the Hydra node is checked too (hydra_node.py).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from mlp_experiments.config.registry import ANY_TARGET_SCHEMAS, TARGET_SCHEMAS, data_schema
from mlp_experiments.config.schemas import (
    NoSchedulerConfig,
    RegularizationConfig,
    TrackingConfig,
    TrainerConfig,
)
from mlp_experiments.errors import UserError

_TORCH_OPTIMIZERS = (
    "ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Muon",
    "NAdam", "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam",
)
_TORCH_SCHEDULERS = (
    "ChainedScheduler", "ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts",
    "CyclicLR", "ExponentialLR", "LambdaLR", "LinearLR", "MultiStepLR", "MultiplicativeLR",
    "OneCycleLR", "PolynomialLR", "ReduceLROnPlateau", "SequentialLR", "StepLR",
)
_TORCH_LOSSES = (
    "BCELoss", "BCEWithLogitsLoss", "CTCLoss", "CosineEmbeddingLoss", "CrossEntropyLoss",
    "GaussianNLLLoss", "HingeEmbeddingLoss", "HuberLoss", "KLDivLoss", "L1Loss",
    "LinearCrossEntropyLoss", "MSELoss", "MarginRankingLoss", "MultiLabelMarginLoss",
    "MultiLabelSoftMarginLoss", "MultiMarginLoss", "NLLLoss", "NLLLoss2d", "PoissonNLLLoss",
    "SmoothL1Loss", "SoftMarginLoss", "TripletMarginLoss", "TripletMarginWithDistanceLoss",
)
ALLOWED_TARGETS: dict[str, frozenset[str]] = {
    "model": frozenset(f"mlp_experiments.models.{name}"
                       for name in ("MLP", "ScratchMLP", "ModelDemo", "CNN")),
    "optimizer": frozenset({*(f"torch.optim.{name}" for name in _TORCH_OPTIMIZERS),
                            "mlp_experiments.optim.ScratchSGD"}),
    "scheduler": frozenset(f"torch.optim.lr_scheduler.{name}" for name in _TORCH_SCHEDULERS),
    "loss": frozenset({*(f"torch.nn.{name}" for name in _TORCH_LOSSES),
                       *(f"mlp_experiments.losses.{name}" for name in (
                           "LogSoftmaxNLL", "OneHotMSE", "SigmoidBCE", "ScratchCrossEntropy"))}),
}
TARGET_KEYS = ("_target_", "_partial_")  # the only keys starting with "_", at a group's root

# Resolvers that turn a string into config nodes: a quoted `{(): module.function}` would become
# a logging factory or a `_target_` after every check of the unresolved config had passed.
STRUCTURE_RESOLVERS = ("oc.decode", "oc.create")


# ---------------------------------------------------------------------------- the job's config


def check_config(cfg: DictConfig) -> None:
    """Refuse a composed training config that would build anything but its groups' allowed
    classes, or holds a key its schema does not have (Hydra's `+` forces new keys in)."""
    check_keys(OmegaConf.to_container(cfg, resolve=False))
    for group in ALLOWED_TARGETS:
        check_target(group, target_of(cfg[group]))
    schemas = section_schemas(cfg)
    unknown = [str(key) for key in cfg if key not in schemas]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a section of the training config (its "
                        f"sections: {', '.join(schemas)}).")
    for section, schema in schemas.items():
        check_schema(section, schema, cfg[section])


def section_schemas(cfg: DictConfig) -> dict[str, type]:
    """The schema of each section of a training config, the groups' by their `_target_`."""
    groups = {group: schema_for(group, target_of(cfg[group])) for group in ALLOWED_TARGETS}
    return {"data": data_schema(cfg.data.name), **groups,
            "regularization": RegularizationConfig, "trainer": TrainerConfig,
            "tracking": TrackingConfig}


def check_keys(tree: Any, path: str = "") -> None:
    """Keys starting with "_" only where they belong: `_target_` and `_partial_` at the root of
    the groups that build an object."""
    for where, key, value in children(tree, path):
        if isinstance(key, str) and key.startswith("_") and not _is_target_key(where):
            raise UserError(
                f"{where}: a config is data, not code. `_target_` and `_partial_` may only be "
                f"set at the root of a config group that builds an object "
                f"({', '.join(f'{group}._target_' for group in ALLOWED_TARGETS)}), and no other "
                f"key may start with '_' (such as _recursive_, _args_ or _convert_). Choose "
                f"a group option instead (e.g. model=mlp, optimizer=adam)."
            )
        check_keys(value, where)


def children(tree: Any, path: str):
    """(path, key, value) of each item of a dict or list (a plain container)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{path}.{key}".lstrip("."), key, value
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield f"{path}[{index}]", index, value


def _is_target_key(path: str) -> bool:
    group, _, key = path.partition(".")
    return group in ALLOWED_TARGETS and key in TARGET_KEYS


def target_of(node: DictConfig) -> str | None:
    return node.get("_target_") if "_target_" in node else None


def check_target(group: str | None, target: Any) -> None:
    if group not in ALLOWED_TARGETS:
        raise UserError(
            f"Only the nodes of the groups {', '.join(ALLOWED_TARGETS)} build objects, not "
            f"{group or 'the root of a config'}."
        )
    if target is None and group == "scheduler":
        return  # scheduler=none: a constant learning rate
    if target not in ALLOWED_TARGETS[group]:
        raise UserError(
            f"{group}._target_={target!r} is not allowed: a config is data, not code, and a "
            f"{group} can only be one of these classes: "
            f"{', '.join(sorted(ALLOWED_TARGETS[group]))}. Choose a {group} option "
            f"({group}=<name>) or one of these classes."
        )


def schema_for(group: str, target: str | None) -> type:
    if target is None:
        return NoSchedulerConfig
    return TARGET_SCHEMAS.get(target) or ANY_TARGET_SCHEMAS[group]


@functools.cache
def structured(schema: type) -> DictConfig:
    """The schema as a config, made once per process (merging copies it)."""
    return OmegaConf.structured(schema)


def check_schema(path: str, schema: type, node: DictConfig) -> None:
    """The node merged into its schema, as Hydra merges a group option into its schema: an
    unknown key or a value of the wrong type names itself."""
    try:
        OmegaConf.merge(structured(schema), OmegaConf.to_container(node))
    except OmegaConfBaseException as error:  # its key and validation errors name the key
        message = str(error).splitlines()[0]
        keys = ", ".join(k for k in structured(schema) if not k.startswith("_"))
        raise UserError(
            f"{path}: {message} ({schema.__name__} holds: {keys or 'no settings'})."
        ) from None


# ---------------------------------------------------------------------------- building


@functools.cache
def allowed_class(name: str) -> type:
    """An allowed class (a name of ALLOWED_TARGETS), imported once per process."""
    module, _, attribute = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except AttributeError:  # the lists follow the torch we pin; an older one lacks a class
        raise UserError(f"{name} does not exist in the installed {module}: choose another "
                        f"class, or the torch version in uv.lock.") from None


def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """Build the object of a config group's node (`cfg.model`, `cfg.optimizer`, ...): its
    `_target_` must name one of the group's allowed classes and resolve to that very class,
    and nothing inside the node is built (Hydra gets the class itself, `_recursive_=False`)."""
    from hydra._internal.utils import _locate  # private: what instantiate resolves, no public twin
    from hydra.utils import instantiate as hydra_instantiate

    group, target = node._key(), target_of(node)  # OmegaConf's only way to a node's own key
    check_target(group, target)
    if target is None:
        raise UserError(f"{group} has no _target_: there is nothing to build.")
    check_keys(OmegaConf.to_container(node, resolve=False), str(group))
    resolved = _locate(target)
    allowed = allowed_class(target)
    if resolved is not allowed:
        raise UserError(
            f"{group}._target_={target!r} resolves to {resolved!r}, not to the allowed class "
            f"{allowed!r}: refused."
        )
    return hydra_instantiate(node, **kwargs, _target_=allowed, _recursive_=False)




def refuse_structure_resolvers() -> None:
    """Make oc.decode and oc.create fail with our reason in this process, in every config it
    resolves: a config is data, and these build config nodes out of strings after the checks."""
    for name in STRUCTURE_RESOLVERS:
        OmegaConf.register_new_resolver(name, _refusing(name), replace=True)


def _refusing(name: str):
    def refused(*_: Any) -> Any:  # an error of OmegaConf's own kind passes through unwrapped
        raise InterpolationResolutionError(
            f"${{{name}:...}} is refused: it builds config nodes out of a string, past the "
            f"checks that keep a config data, not code. Write the value as YAML instead.")

    return refused


# In force in every process that reads a config: each command checks its configs through here.
refuse_structure_resolvers()
