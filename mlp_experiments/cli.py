"""One command line for every command: `KEY=VALUE` overrides in Hydra's grammar.

`mlp-train` is a Hydra app. Every other command (`mlp-sweep`, `mlp-report`, `mlp-evaluate`,
`mlp-ui`, `mlp-plots`) describes its keys in a structured config (`Command.schema`, one section
per command, e.g. `ui.port`, plus `tracking.uri` where it reads MLflow) and gets from `parse`:
* overrides parsed by Hydra's own override parser (quoting, lists, dicts, `${...}` as in
  `mlp-train`) and typed by OmegaConf: an unknown key names the allowed ones, a wrong value the
  expected type;
* `--help`: usage and every key with its type and default; `--cfg`: the config these overrides
  give, resolved, as YAML (passwords in URLs masked);
* one message for the spellings of before (`port=` is `ui.port=` now), and one for `hydra.*`:
  only `mlp-train` runs a Hydra job, whose output folder and logging those keys set.
`mlp-sweep` and `mlp-report` pass `sweep=<name>`, `sweep.*` (checked here against
`SweepConfig`) and any training override on to the sweep's own loading.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlp_experiments.config.schemas import TrackingConfig
from mlp_experiments.errors import UserError, exit_interrupted, stop_on_signals
from mlp_experiments.redact import redact


def described(default: Any, about: str) -> Any:
    """A key of a command's schema with the line `--help` shows for it."""
    return field(default=default, metadata={"help": about})


@dataclass
class TrackingStore:
    """The MLflow store a command reads: a training's `tracking.uri`, with its default."""

    uri: str = described(f"${{oc.env:MLFLOW_TRACKING_URI,{TrackingConfig.uri}}}",
                         "the MLflow tracking store (the default reads $MLFLOW_TRACKING_URI)")


@dataclass(frozen=True)
class Command:
    name: str  # mlp-<name>, python -m mlp_experiments.<name>
    summary: str
    schema: type  # a dataclass of sections, each a dataclass of keys
    choices: dict[str, str] = field(default_factory=dict)  # KEY=<option>: passed on, its help
    passed_on: tuple[str, ...] = ()  # sections of `schema` checked here and passed on
    training: bool = False  # any other KEY=VALUE is a training override, passed on
    notes: str = ""  # more lines for --help
    describe: Callable[[DictConfig, list[str]], Any] | None = None  # what --cfg prints

    @property
    def program(self) -> str:
        return f"mlp-{self.name}"


HYDRA_KEYS = ("hydra.* keys are mlp-train's alone: only it runs a Hydra job, whose output folder "
              "(hydra.run.dir) and logging they set. mlp-{name} --help lists its keys.")


def parse(command: Command, arguments: list[str]) -> tuple[DictConfig, list[str]]:
    """The command's config with these overrides applied, and the arguments it passes on (in
    their order). `--help` and `--cfg` print and end the process (exit code 0)."""
    if "--help" in arguments or "-h" in arguments:
        print(help_text(command))
        raise SystemExit(0)
    show = "--cfg" in arguments
    arguments = [argument for argument in arguments if argument != "--cfg"]
    check_spelling(command, arguments)
    cfg = OmegaConf.structured(command.schema)
    passed = []
    for argument, override in zip(arguments, parse_overrides(command, arguments), strict=True):
        name = override.key_or_group
        section = name.split(".")[0].split("/")[0]
        if section == "hydra":
            raise UserError(f"{argument}: {HYDRA_KEYS.format(name=command.name)}")
        if name in command.choices:
            passed.append(argument)
        elif section in sections(command.schema):
            set_value(command, cfg, override)
            if section in command.passed_on:
                passed.append(argument)
        elif command.training:
            passed.append(argument)
        else:
            raise unknown_key(command, name)
    if show:
        shown = command.describe(cfg, passed) if command.describe else cfg
        print(redact(OmegaConf.to_yaml(shown, resolve=True)), end="")
        raise SystemExit(0)
    for missing in sorted(OmegaConf.missing_keys(cfg)):
        if missing.split(".")[0] not in command.passed_on:
            raise UserError(f"{missing} has no value: {command.program} {missing}=<value> "
                            f"({command.program} --help lists the keys).")
    return cfg, passed


def check_spelling(command: Command, arguments: list[str]) -> None:
    for argument in arguments:
        if argument.startswith("-"):
            raise UserError(f"{argument}: {command.program} takes --help, --cfg and KEY=VALUE "
                            f"overrides ({command.program} --help lists the keys).")
        if "=" not in argument and not argument.startswith("~"):
            raise UserError(f"'{argument}' is not KEY=VALUE ({command.program} --help lists "
                            f"the keys).")


def parse_overrides(command: Command, arguments: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, overrides = OverridesParser.create(), []
    for argument in arguments:
        try:
            overrides.append(parser.parse_override(argument))
        except HydraException as error:
            raise UserError(f"{argument}: {error}") from None
    return overrides


def set_value(command: Command, cfg: DictConfig, override) -> None:
    """One override of the command's own keys, as Hydra applies a value to a typed config."""
    from hydra.core.override_parser.types import OverrideType

    name, keys, line = override.key_or_group, keys_of(command.schema), override.input_line
    if name not in keys and not in_a_dict(keys, name):
        raise unknown_key(command, name)
    if override.type != OverrideType.CHANGE or override.package is not None:
        raise UserError(f"{line}: {command.program}'s keys are fixed: set it with {name}=VALUE.")
    if override.is_sweep_override():
        raise UserError(f"{line}: one value per key (a sweep of values is mlp-train -m's, or a "
                        f"sweep file's).")
    kind = keys[name].type if name in keys else typing.Any
    value = override.value()
    if str in (kind, *typing.get_args(kind)) and isinstance(value, int | float):
        value = line.split("=", 1)[1]  # a text such as the run id 1234e5 stays as it is typed
    try:
        parts = name.split(".")
        for depth in range(1, len(parts)):  # an optional block left out (null) is made empty
            parent = ".".join(parts[:depth])
            if OmegaConf.select(cfg, parent) is None:
                kind = field_type(command.schema, parent)
                empty = OmegaConf.structured(kind) if dataclasses.is_dataclass(kind) else {}
                OmegaConf.update(cfg, parent, empty, merge=False)
        OmegaConf.update(cfg, name, value, merge=True)
    except OmegaConfBaseException as error:
        raise UserError(f"{line}: {name} takes {type_name(kind)} "
                        f"({str(error).splitlines()[0]}).") from None


def in_a_dict(keys: dict[str, Key], name: str) -> bool:
    """Is `name` an entry of a dict-typed key (sweep.slurm.mem_gb, of sweep.slurm)?"""
    return any(name.startswith(f"{key}.") and typing.get_origin(optional(keys[key].type)) is dict
               for key in keys)


def field_type(schema: type, dotted: str) -> Any:
    """The type of a key of a schema of dataclasses, inside any `| None`."""
    kind = schema
    for part in dotted.split("."):
        kind = optional(typing.get_type_hints(kind)[part])
    return kind


def optional(kind: Any) -> Any:
    """The type inside `X | None` (a sweep file's optional `tune:` and `race:` blocks)."""
    inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    return inner[0] if type(None) in typing.get_args(kind) and len(inner) == 1 else kind


def unknown_key(command: Command, name: str) -> UserError:
    keys = [*command.choices, *keys_of(command.schema)]
    # A key named without its section (port for ui.port, out for report.out_dir) first.
    leaves = {key.rsplit(".", 1)[-1]: key for key in reversed(keys)}
    close = [leaves[leaf] for leaf in difflib.get_close_matches(name, leaves, n=1)] \
        or difflib.get_close_matches(name, keys, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"Unknown key '{name}' for {command.program}.{hint}\n"
                     f"Its keys: {', '.join(keys)}")


@dataclass(frozen=True)
class Key:
    type: Any
    default: Any
    help: str


def sections(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def keys_of(schema: type, prefix: str = "") -> dict[str, Key]:
    """Every leaf key of a schema of dataclasses, dotted, with its type, default and help."""
    keys, hints = {}, typing.get_type_hints(schema)
    for item in dataclasses.fields(schema):
        kind = hints[item.name]
        if dataclasses.is_dataclass(optional(kind)):
            kind = optional(kind)
            keys.update(keys_of(kind, f"{prefix}{item.name}."))
            continue
        default = item.default
        if item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        keys[prefix + item.name] = Key(kind, default, item.metadata.get("help", ""))
    return keys


def type_name(kind: Any) -> str:
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return " | ".join(member.name for member in kind)
    return kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")


def shown_default(default: Any) -> str:
    if default is MISSING:
        return "(required)"
    if isinstance(default, enum.Enum):
        return default.name
    return "null" if default is None else str(default)


def help_text(command: Command) -> str:
    rows = [(f"{name}=<name>", "", "", about) for name, about in command.choices.items()]
    rows += [(name, type_name(k.type), shown_default(k.default), k.help)
             for name, k in keys_of(command.schema).items()]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"usage: {command.program} [--help] [--cfg] [KEY=VALUE ...]  (or python -m "
             f"mlp_experiments.{command.name} ...)", "", textwrap.fill(command.summary, 100), "",
             "Keys (KEY=VALUE, Hydra's override grammar, as mlp-train's):",
             *(("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                           strict=False))
                + "  " + row[3]).rstrip() for row in rows)]
    if command.notes:
        lines += ["", *(textwrap.fill(line, 100) for line in command.notes.splitlines())]
    lines += ["", "--cfg prints the config these overrides give (YAML) and exits; --help prints "
              "this.", "hydra.* keys are mlp-train's alone (only it runs a Hydra job)."]
    return "\n".join(lines)


def train() -> None:
    """`mlp-train`: `python -m mlp_experiments.train`, as it is. Hydra finds `conf/` beside the
    file its app runs from as `__main__`; called as an imported module's function, Hydra would
    look for a `conf` package instead."""
    import runpy

    try:
        stop_on_signals()  # a signal while the module imports ends the command quietly too
        runpy.run_module("mlp_experiments.train", run_name="__main__", alter_sys=True)
    except KeyboardInterrupt as stop:
        exit_interrupted(stop)
