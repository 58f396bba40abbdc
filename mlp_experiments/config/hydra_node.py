"""The Hydra node of a config is code too: Hydra builds its callbacks, launcher and sweeper,
configures logging from it (dictConfig's `()` factories and handler classes are code), sets the
job's environment from it, and submitit writes launcher settings into the sbatch script. Every
check here runs on the node as Hydra resolves it for the job."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mlp_experiments.cluster import check_fits_partition
from mlp_experiments.config.policy import check_keys, children
from mlp_experiments.errors import UserError

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
LAUNCHERS = frozenset({
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    SLURM_LAUNCHER,
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
    if tree["launcher"]["_target_"] == SLURM_LAUNCHER:  # the jobs must fit a node
        check_fits_partition("hydra.launcher", tree["launcher"])
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
    for where, _, value in children(settings, path):
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
    for where, _, value in children(tree, path):
        if isinstance(value, str) and value.startswith(("ext://", "cfg://")) and \
                value not in LOGGING_STREAMS:
            raise UserError(f"{where}={value!r}: only {' or '.join(LOGGING_STREAMS)}.")
        _check_logging_values(where, value)
