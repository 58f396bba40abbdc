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
* the Hydra node is checked too, because Hydra builds its callbacks, launcher and sweeper,
  configures logging (whose `()` factories and handler classes are code) and sets the
  environment of the job from it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from mlp_experiments.config.schemas import (
    ANY_TARGET_SCHEMAS,
    TARGET_SCHEMAS,
    NoSchedulerConfig,
    RegularizationConfig,
    TrackingConfig,
    TrainerConfig,
    data_schema,
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

LAUNCHERS = frozenset({
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
})
SWEEPERS = frozenset({"hydra._internal.core_plugins.basic_sweeper.BasicSweeper"})
# Logging configs are handed to logging.config.dictConfig, which imports and calls what they
# name: each section may hold only these keys, and build only these classes of the standard library.
LOGGING_KEYS = {
    "": {"version", "formatters", "filters", "handlers", "loggers", "root", "incremental",
         "disable_existing_loggers"},
    "formatters": {"class", "format", "datefmt", "style", "validate", "defaults"},
    "filters": {"name"},
    "handlers": {"class", "level", "formatter", "filters", "stream", "filename", "mode",
                 "encoding", "delay", "errors", "maxBytes", "backupCount"},
    "loggers": {"level", "propagate", "filters", "handlers"},
    "root": {"level", "filters", "handlers"},
}
LOGGING_CLASSES = {
    "formatters": frozenset({"logging.Formatter"}),
    "handlers": frozenset({"logging.StreamHandler", "logging.FileHandler", "logging.NullHandler",
                           "logging.handlers.RotatingFileHandler",
                           "logging.handlers.WatchedFileHandler"}),
}
LOGGING_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
# Resolvers that turn a string into config nodes: a quoted `{(): module.function}` would become
# a logging factory or a `_target_` after every check of the unresolved config had passed.
STRUCTURE_RESOLVERS = ("oc.decode", "oc.create")

_LOGGING_WHY = ("Hydra hands it to logging.config.dictConfig, whose '()' factories and handler "
                "classes are code: choose a predefined one, e.g. hydra/job_logging=disabled")
_LAUNCHER_WHY = ("submitit writes launcher settings into the sbatch script, where a newline or "
                 "another control character starts a shell command of its own")
# A command-line override of one of these Hydra keys, of a key under it or of a parent (which
# could set it as a dict) is refused, with the reason.
GUARDED_HYDRA_KEYS = {
    "hydra.callbacks": "Hydra instantiates its callbacks",
    "hydra.job.env_set": "it sets the environment of the job (LD_PRELOAD, PYTHONPATH, ...): "
                         "set variables in the shell instead",
    "hydra.job.env_copy": "it copies the environment into the job: set variables in the shell",
    "hydra.launcher._target_": "Hydra instantiates it: choose a launcher with "
                               "hydra/launcher=<option>",
    "hydra.sweeper._target_": "Hydra instantiates it: choose a sweeper with "
                              "hydra/sweeper=<option>",
    "hydra.launcher.setup": "submitit runs these shell commands in every job: set the jobs' "
                            "environment up in the shell you submit from (sbatch passes it on)",
    "hydra.job_logging": _LOGGING_WHY,
    "hydra.hydra_logging": _LOGGING_WHY.replace("job_logging", "hydra_logging"),
    "hydra.searchpath": "a pkg:// search path imports a Python package: add a config folder "
                        "with --config-dir <folder> instead",
}
GUARDED_HYDRA_GROUPS = {"hydra/callbacks": "Hydra instantiates its callbacks"}


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
    for where, key, value in _children(tree, path):
        if isinstance(key, str) and key.startswith("_") and not _is_target_key(where):
            raise UserError(
                f"{where}: a config is data, not code. `_target_` and `_partial_` may only be "
                f"set at the root of a config group that builds an object "
                f"({', '.join(f'{group}._target_' for group in ALLOWED_TARGETS)}), and no other "
                f"key may start with '_' (such as _recursive_, _args_ or _convert_). Choose "
                f"a group option instead (e.g. model=mlp, optimizer=adam)."
            )
        check_keys(value, where)


def _children(tree: Any, path: str):
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
    from hydra._internal.utils import _locate
    from hydra.utils import instantiate as hydra_instantiate

    group, target = node._key(), target_of(node)
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


# ---------------------------------------------------------------------------- the Hydra node


def check_hydra_overrides(overrides: list[str]) -> None:
    """Refuse command-line overrides of the Hydra keys that build objects or set the
    environment (choosing a predefined option, such as hydra/job_logging=disabled, is fine)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise UserError(str(error)) from None
    for override in parsed:
        why = _refusal(override.key_or_group)
        if why:
            raise UserError(
                f"{override.input_line}: overriding {override.key_or_group} is not allowed: "
                f"{why}."
            )


def _refusal(key: str) -> str | None:
    """Why an override of this key is refused, or None."""
    if key in GUARDED_HYDRA_GROUPS:
        return GUARDED_HYDRA_GROUPS[key]
    for guarded, why in GUARDED_HYDRA_KEYS.items():
        if f"{key}.".startswith(f"{guarded}."):
            return why
        if guarded.startswith(f"{key}."):
            return f"it can set {guarded}, and {why}"
    if key.startswith("hydra.") and any(part.startswith("_") for part in key.split(".")):
        return "keys starting with '_' make Hydra build objects"
    return None


def check_hydra_config(cfg: DictConfig) -> None:
    """The Hydra node of a config composed with it (command line, presets and any --config-dir
    folder together), resolved as Hydra resolves it when it runs the job: no callbacks, no
    environment, a known launcher and sweeper with plain settings, logging configs of allowed
    classes only."""
    tree = resolved_hydra_node(cfg)
    for key, value in (("callbacks", tree["callbacks"]), ("job.env_set", tree["job"]["env_set"]),
                       ("job.env_copy", tree["job"]["env_copy"])):
        if value:
            raise UserError(f"hydra.{key} must stay empty: {GUARDED_HYDRA_KEYS[f'hydra.{key}']}.")
    _check_plugin("hydra.launcher", tree["launcher"], LAUNCHERS)
    check_launcher_settings("hydra.launcher", tree["launcher"])
    _check_plugin("hydra.sweeper", tree["sweeper"], SWEEPERS)
    for key in ("job_logging", "hydra_logging"):
        check_logging(f"hydra.{key}", tree[key])
    for entry in tree["searchpath"]:
        if not str(entry).startswith("file://"):
            raise UserError(f"hydra.searchpath: {entry}: {GUARDED_HYDRA_KEYS['hydra.searchpath']}.")


def resolved_hydra_node(cfg: DictConfig) -> dict:
    """The parts of the Hydra node that Hydra builds or runs something from, every
    interpolation resolved as in the job (its output folder is the one thing not known yet)."""
    import copy

    from hydra.core.hydra_config import HydraConfig

    cfg = copy.deepcopy(cfg)  # the whole config: interpolations are relative to its root
    with open_dict(cfg):
        if OmegaConf.is_missing(cfg.hydra.runtime, "output_dir"):
            cfg.hydra.runtime.output_dir = "<the job's output folder>"
    holder, saved = HydraConfig.instance(), HydraConfig.instance().cfg
    holder.set_config(cfg)  # for ${hydra:...}
    try:
        return {key: _resolved(cfg.hydra, key) for key in (
            "callbacks", "job", "launcher", "sweeper", "job_logging", "hydra_logging",
            "searchpath")}
    finally:
        holder.cfg = saved


def _resolved(hydra: DictConfig, key: str) -> Any:
    node = hydra[key]
    if key == "job":  # only its environment: its id and number are set per job later
        node = OmegaConf.masked_copy(node, ["env_set", "env_copy"])
    try:
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException as error:
        raise UserError(f"hydra.{key}: {str(error).splitlines()[0]}") from None


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


def _check_plugin(path: str, node: dict, allowed: frozenset[str]) -> None:
    if node.get("_target_") not in allowed:
        raise UserError(
            f"{path}._target_={node.get('_target_')!r} is not allowed: use one of "
            f"{', '.join(sorted(allowed))}."
        )
    check_keys({key: value for key, value in node.items() if key != "_target_"}, path)


def check_launcher_settings(path: str, settings: Any) -> None:
    """Resolved launcher settings hold no shell: no `setup` commands, and no string with a
    newline or another control character (submitit quotes values but keeps their newlines)."""
    if isinstance(settings, dict) and settings.get("setup"):
        raise UserError(f"{path}.setup: {GUARDED_HYDRA_KEYS['hydra.launcher.setup']}.")
    for where, _, value in _children(settings, path):
        if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise UserError(f"{where}={value!r}: a control character is refused: "
                            f"{_LAUNCHER_WHY}. Write the value on one line.")
        check_launcher_settings(where, value)


def check_logging(path: str, tree: Any) -> None:
    """A logging config (dictConfig's schema) with the keys of LOGGING_KEYS and the classes of
    LOGGING_CLASSES only; streams are stdout or stderr, and nothing refers elsewhere."""
    if tree is None:
        return
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a logging config is a mapping (dictConfig's schema).")
    _check_logging_keys(path, tree, "")
    for section in ("formatters", "filters", "handlers", "loggers"):
        entries = tree.get(section) or {}
        if not isinstance(entries, dict):
            raise UserError(f"{path}.{section}: a mapping of names to settings.")
        for name, entry in entries.items():
            _check_logging_keys(f"{path}.{section}.{name}", entry, section)
    if tree.get("root") is not None:
        _check_logging_keys(f"{path}.root", tree["root"], "root")
    _check_logging_values(path, tree)


def _check_logging_keys(path: str, entry: Any, section: str) -> None:
    if not isinstance(entry, dict):
        raise UserError(f"{path}: settings are a mapping.")
    if "()" in entry:
        raise UserError(f"{path}.(): a '()' factory is code, not data. {_LOGGING_WHY}.")
    unknown = sorted(str(key) for key in entry if key not in LOGGING_KEYS[section])
    if unknown:
        raise UserError(f"{path}: {', '.join(unknown)} is not allowed here ({_LOGGING_WHY}); "
                        f"allowed: {', '.join(sorted(LOGGING_KEYS[section]))}.")
    if "class" in entry and entry["class"] not in LOGGING_CLASSES.get(section, ()):
        raise UserError(f"{path}.class={entry['class']!r} is not allowed: "
                        f"{section} may only be {', '.join(sorted(LOGGING_CLASSES[section]))}.")


def _check_logging_values(path: str, tree: Any) -> None:
    """dictConfig imports `ext://` names and follows `cfg://` references wherever they are."""
    for where, _, value in _children(tree, path):
        if isinstance(value, str) and value.startswith(("ext://", "cfg://")) and \
                value not in LOGGING_STREAMS:
            raise UserError(f"{where}={value!r}: only {' or '.join(LOGGING_STREAMS)}.")
        _check_logging_values(where, value)


# In force in every process that reads a config: each command checks its configs through here.
refuse_structure_resolvers()
