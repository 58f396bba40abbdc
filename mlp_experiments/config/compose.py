"""The training config composed by Hydra from `conf/`, as the commands compose it, and checked
with one message per mistake. Imports only Hydra and OmegaConf: a config mistake is answered
before torch and mlflow are loaded."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from mlp_experiments.config import hydra_node
from mlp_experiments.config.checks import validate
from mlp_experiments.config.registry import register_configs
from mlp_experiments.errors import UserError, explain_unknown_key, with_causes, wrong_value

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def group_dirs(config_dir: Path) -> list[Path]:
    """The folders of a config directory that are the job's config groups: conf/hydra/ holds
    options of Hydra's own groups (hydra/launcher=slurm), which --hydra-help lists."""
    return [path for path in config_dir.iterdir() if path.is_dir() and path.name != "hydra"]


CONFIG_GROUPS = frozenset(path.name for path in group_dirs(CONF_DIR))


@contextmanager
def hydra_initialized(config_dir: Path = CONF_DIR, extra_dir: str | Path | None = None):
    """Hydra initialised on `config_dir` and, as `--config-dir` adds it, `extra_dir`."""
    from hydra import initialize_config_dir
    from hydra._internal.hydra import Hydra  # private: initialize_config_dir takes one folder
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
    ConfigLoaderImpl._apply_overrides_to_config(  # private: Hydra's own override semantics
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

    hydra_node.check_hydra_overrides(overrides)
    try:
        cfg = compose_config(overrides, *where, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        groups = [o for o in overrides if o.split("=")[0] in CONFIG_GROUPS]
        try:
            base = compose_config(groups, *where)
        except (HydraException, OmegaConfBaseException):
            base = None
        raise UserError(wrong_value(error)
                        or explain_unknown_key(with_causes(error), base)) from None
    hydra_node.check_hydra_config(cfg)
    check_no_credentials(cfg)
    hydra = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        validate(cfg)
    except OmegaConfBaseException as error:  # e.g. a --config-path primary config without a group
        raise UserError(with_causes(error)) from None
    return cfg, hydra


def check_no_credentials(cfg: DictConfig) -> None:
    """No value of the composed config (the Hydra node with its overrides included) is a URL
    with a password: Hydra writes them all into the run's folder."""
    from omegaconf import OmegaConf

    from mlp_experiments.redact import CREDENTIALS_ADVICE, has_credentials, redact

    def walk(tree: Any, path: str) -> None:
        items = tree.items() if isinstance(tree, dict) else enumerate(tree) \
            if isinstance(tree, list) else ()
        for key, value in items:
            where = f"{path}.{key}".lstrip(".")
            if isinstance(value, str) and has_credentials(value):
                raise UserError(f"{where}={redact(value)} holds a password, which Hydra would "
                                f"write in clear into the run's folder (.hydra/*.yaml): "
                                f"{CREDENTIALS_ADVICE}.")
            walk(value, where)

    tree = OmegaConf.to_container(cfg, resolve=False)
    walk({key: value for key, value in tree.items() if key != "hydra"}, "")  # its key first
    walk({"hydra": tree.get("hydra", {})}, "")


def check_command_line(overrides: list[str], config_name: str = "train",
                       config_dir: Path = CONF_DIR, extra_dir: str | Path | None = None
                       ) -> tuple[DictConfig, DictConfig]:
    """Every job a Hydra command line can start passes check_overrides: each value of each
    sweep (`-m key=a,b`, and the sweeper's own `hydra.sweeper.params`) with the first value of
    the others. Checking train()'s config is not enough: Hydra sets a job's logging and
    environment from its Hydra node before train() runs. Returns the first job's config and
    Hydra node."""
    where = (config_name, config_dir, extra_dir)
    first = one_value_each(overrides, config_dir, extra_dir)[0]
    cfg, hydra = _checked(first, *where)
    check_output_folders(cfg, hydra)
    params = [f"{key}={value}" for key, value in (hydra.sweeper.get("params") or {}).items()]
    for job in one_value_each([*params, *overrides], config_dir, extra_dir):
        if job != first:
            _checked(job, *where)
    return cfg, hydra


def check_output_folders(cfg: DictConfig, hydra: DictConfig) -> None:
    """The folders a training writes (Hydra's run or sweep folder, the checkpoints) can be
    created, checked before Hydra creates the first one."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from mlp_experiments.stores import check_folder

    for key in ("run.dir", "sweep.dir"):
        try:
            folder = OmegaConf.select(hydra, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException:  # refers to the job's own node: Hydra will say
            continue
        check_folder(folder, f"hydra.{key}")
    if "trainer" in cfg:
        check_folder(cfg.trainer.checkpoint_dir, "trainer.checkpoint_dir")


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
