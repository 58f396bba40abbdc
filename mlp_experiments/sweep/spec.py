"""What a sweep file says: `SweepConfig`, its loading and checks, its Optuna sampler and pruner,
and the overrides of its trials (the space's grammar: sweep/space.py)."""

from __future__ import annotations

import inspect
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from mlp_experiments.config import hydra_node
from mlp_experiments.config.checks import model_shape, validate
from mlp_experiments.config.compose import (
    CONF_DIR,
    CONFIG_GROUPS,
    check_no_credentials,
    check_overrides,
    with_values,
)
from mlp_experiments.errors import UserError
from mlp_experiments.sweep.space import corner_params, grid_of
from mlp_experiments.task import Task

SWEEPS_DIR = CONF_DIR.parent / "sweeps"
DEFAULT_STORAGE = "sqlite:///optuna.db"
STORAGE_SCHEME = re.compile(r"(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://")
# Keys whose sensible values span orders of magnitude: a linear search wastes most trials.
LOG_SCALE_KEYS = {"optimizer.lr", "regularization.weight_decay", "regularization.l2_penalty",
                  "regularization.l1_penalty"}
# A study's name names files and folders (docs/<study>/, outputs/presets/.../<study>.yaml).
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random", "qmc", "grid")
LAUNCHERS = ("local", "slurm")
SEED_KEY = "trainer.seed"  # a comparison's runs of one seed are paired across its variants


@dataclass
class TuneConfig:
    """A comparison's tuning stage (sweep/stages.py): every variant gets the same budget."""

    space: dict[str, str] = field(default_factory=dict)  # key -> Hydra sweep expression
    # variant -> its own keys beyond `space` (the strength of a penalty only one variant has)
    variant_space: dict[str, dict[str, str]] = field(default_factory=dict)
    n_trials: int = MISSING  # per variant
    sampler: str = "tpe"  # tpe, random or qmc (sweep.seed seeds it)
    sampler_args: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"  # on the validation metric, among the variant's own trials
    pruner_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the training seed of every tuning trial; the judging seeds come after it


@dataclass
class SweepConfig:
    study_name: str = MISSING
    overrides: list[str] = field(default_factory=list)  # training overrides for every trial
    space: dict[str, str] = field(default_factory=dict)  # key -> Hydra sweep expression
    variants: dict[str, list[str]] = field(default_factory=dict)  # comparisons: name -> overrides
    metric: str = "val_acc"
    direction: str = "maximize"
    sampler: str = "tpe"  # tpe, random, qmc (quasi-random) or grid
    sampler_args: dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 4}
    pruner: str = "median"  # none, median, percentile, successive_halving, hyperband, threshold
    pruner_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the sampler's
    n_trials: int | None = None  # None: the size of the grid
    seeds: int | None = None  # a comparison on seeds 0..seeds-1: space.trainer.seed, set
    timeout: float | None = None  # seconds, for this command
    storage: str | None = None  # any Optuna storage URL; None: sqlite:///optuna.db
    n_workers: int = 1
    launcher: str = "local"  # local: worker processes here; slurm: one Slurm job array
    slurm: dict[str, Any] = field(default_factory=dict)  # conf/hydra/launcher/slurm.yaml's keys
    # A comparison tuned per variant before it is judged, and judged by a race over seeds
    # (sweep/stages.py); `race: {}` races with report/racing.py's defaults.
    tune: TuneConfig | None = None
    race: dict[str, Any] | None = None


def split_arguments(arguments: list[str]) -> tuple[str, list[str], list[str]]:
    """(sweep name, sweep.* overrides, training overrides) from the command line, read by
    Hydra's override parser as every command's (`mlp_experiments.cli`). The sweep.* overrides
    come as load_sweep's `key=value` with the value Hydra typed, in JSON (which YAML reads as
    it is); the training overrides as they were typed."""
    import json

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except HydraException as error:
        raise UserError(str(error)) from None
    name, sweep_overrides, training = None, [], []
    for argument, override in zip(arguments, overrides, strict=True):
        key = override.key_or_group
        if key == "sweep":
            name = str(override.value())
        elif key.startswith("sweep."):
            sweep_overrides.append(f"{key.removeprefix('sweep.')}={json.dumps(override.value())}")
        elif key.split(".")[0] in SweepConfig.__dataclass_fields__:
            raise UserError(f"{argument}: {key} is a sweep setting: sweep.{argument} "
                            f"(mlp-sweep --help lists them).")
        else:
            training.append(argument)
    if name is None:
        raise UserError(f"Name the sweep: sweep=<name>, one of: {available_sweeps()}.")
    return name, sweep_overrides, training


def available_sweeps() -> str:
    return ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))


def describe_arguments(arguments: list[str]) -> dict[str, Any]:
    """What `--cfg` shows of a sweep's command line: the sweep's settings (its file with the
    sweep.* overrides) and the training overrides every trial gets."""
    name, sweep_overrides, training = split_arguments(arguments)
    return {"sweep": load_sweep(name, sweep_overrides), "training_overrides": training}


def load_sweep(name: str, overrides: list[str]) -> DictConfig:
    """sweeps/<name>.yaml, or the YAML file `name` points at."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"No sweep '{name}' in {SWEEPS_DIR}: choose one of {available_sweeps()}.")
    schema = OmegaConf.structured(SweepConfig)
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.load(path), OmegaConf.from_dotlist(overrides))
    except Exception as error:  # OmegaConf names the key and the expected type
        raise UserError(f"Sweep '{name}': {error}") from None
    if cfg.seeds is not None:
        set_seeds(cfg)
    if not cfg.space and not cfg.variants:
        raise UserError(f"Sweep '{name}' has neither a space nor variants to try.")
    check_settings(cfg)
    return cfg


def set_seeds(sweep: DictConfig) -> None:
    """sweep.seeds=N: the one spelling that shrinks or grows a comparison (seeds 0..N-1)."""
    if sweep.seeds < 1:
        raise UserError(f"sweep.seeds={sweep.seeds} must be at least 1 (seeds 0 to N-1 per "
                        f"variant).")
    if sweep.tune is not None or sweep.race is not None:
        raise UserError("sweep.seeds: a staged comparison's race hands out the seeds; set "
                        "sweep.race.max_seeds instead.")
    if not sweep.variants and sweep.sampler != "grid":
        raise UserError("sweep.seeds sets the seeds of a comparison (named variants or a grid); "
                        "a search draws its trials: set sweep.n_trials.")
    sweep.space[SEED_KEY] = f"range(0, {sweep.seeds})"


def check_settings(sweep: DictConfig) -> None:
    """The sweep's own settings, each with one message (the training overrides are checked
    with the trials, by check_space)."""
    name = sweep.study_name
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"sweep.study_name={name!r}: it names files and folders (outputs/reports/<study>/, "
            f"outputs/presets/experiment/best/<study>.yaml), so it may only hold letters, "
            f"digits, '_', '.' "
            f"and '-', start with a letter or digit and not contain '..'."
        )
    if sweep.n_workers < 1:
        raise UserError(f"sweep.n_workers={sweep.n_workers} must be at least 1.")
    if sweep.n_trials is not None and sweep.n_trials < 1:
        raise UserError(f"sweep.n_trials={sweep.n_trials} must be at least 1 (or null: the "
                        f"size of a grid).")
    if sweep.timeout is not None and not sweep.timeout > 0:
        raise UserError(f"sweep.timeout={sweep.timeout} must be a number of seconds above 0 "
                        f"(or null: no time limit).")
    if sweep.launcher not in LAUNCHERS:
        raise UserError(f"sweep.launcher={sweep.launcher}: choose {' or '.join(LAUNCHERS)}.")
    if sweep.slurm and sweep.launcher != "slurm":
        raise UserError("sweep.slurm sets the Slurm jobs of sweep.launcher=slurm: add that.")
    if sweep.direction not in DIRECTIONS:
        raise UserError(f"sweep.direction={sweep.direction}: choose {' or '.join(DIRECTIONS)}.")
    if sweep.sampler not in SAMPLERS:
        raise UserError(f"sweep.sampler={sweep.sampler}: choose one of {', '.join(SAMPLERS)}.")
    if sweep.sampler == "grid" and sweep.sampler_args:
        raise UserError("sweep.sampler_args: the grid sampler takes none (it runs every cell "
                        "of the space).")
    if sweep.sampler != "grid":
        make_sampler(sweep, {}, sweep.seed)
    make_pruner(sweep)
    storage_url(sweep)


def storage_url(sweep: DictConfig) -> str:
    """sweep.storage, else $OPTUNA_STORAGE (keeps a password off command lines), else a
    SQLite file in the working directory."""
    url = sweep.storage or os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE
    if not STORAGE_SCHEME.match(url):  # the scheme only: the rest may hold a password
        raise UserError(
            f"sweep.storage: the scheme '{url.partition(':')[0]}' is not an Optuna storage we "
            f"use: sqlite:///<file>, postgresql[+driver]://... or mysql[+driver]://..."
        )
    return url


def make_sampler(sweep: DictConfig, distributions: dict[str, Any], seed: int):
    import optuna

    if sweep.sampler == "grid":
        # Optuna gives trial k the k-th cell of the grid shuffled by this seed: every worker
        # must shuffle it alike, or two run one cell and none another.
        return optuna.samplers.GridSampler(grid_of(distributions, sweep.variants),
                                           seed=sweep.seed)
    if sweep.sampler == "qmc":
        # Quasi-random (Sobol) points are a sequence: every worker must draw from the same one,
        # which the study's trial count indexes.
        with warnings.catch_warnings():  # experimental since Optuna 3.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return made(optuna.samplers.QMCSampler, "sampler", "qmc", sweep.sampler_args,
                        seed=sweep.seed, warn_asynchronous_seeding=False)
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if sweep.sampler not in samplers:
        raise UserError(f"sweep.sampler={sweep.sampler}: choose tpe, random, qmc or grid.")
    return made(samplers[sweep.sampler], "sampler", sweep.sampler, sweep.sampler_args,
                seed=seed)


def make_pruner(sweep: DictConfig):
    import optuna

    pruners = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,  # keeps pruner_args.percentile % of trials
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "threshold": optuna.pruners.ThresholdPruner,  # prunes below pruner_args.lower
    }
    if sweep.pruner not in pruners:
        raise UserError(f"sweep.pruner={sweep.pruner}: choose one of {', '.join(pruners)}.")
    if sweep.pruner == "none":  # pruner_args belong to the pruner the sweep file names
        return pruners["none"]()
    return made(pruners[sweep.pruner], "pruner", sweep.pruner, sweep.pruner_args)


def made(kind: type, setting: str, name: str, arguments: DictConfig, **fixed: Any):
    """An Optuna sampler or pruner from the sweep's `<setting>_args`, each of which must be a
    parameter of its class."""
    parameters = inspect.signature(kind).parameters
    takes = [p for p in parameters if p not in fixed]
    unknown = sorted(set(arguments) - set(takes))
    if unknown:
        raise UserError(
            f"sweep.{setting}_args: {', '.join(unknown)} is not a parameter of the {name} "
            f"{setting} ({kind.__name__}): it takes {', '.join(takes)}."
        )
    needed = [p for p in takes if p not in arguments and parameters[p].kind is
              inspect.Parameter.POSITIONAL_OR_KEYWORD and parameters[p].default is
              inspect.Parameter.empty]
    if needed:
        raise UserError(f"sweep.{setting}={name} needs sweep.{setting}_args.{needed[0]} (a "
                        f"parameter of {kind.__name__}).")
    try:
        return kind(**arguments, **fixed)
    except (TypeError, ValueError) as error:
        raise UserError(f"sweep.{setting}_args: {error}") from None


def budget(sweep: DictConfig, distributions: dict[str, Any]) -> int:
    if sweep.n_trials is not None:
        return sweep.n_trials
    if sweep.sampler != "grid":
        raise UserError("sweep.n_trials is needed unless sweep.sampler=grid.")
    size = 1
    for values in grid_of(distributions, sweep.variants).values():
        size *= len(values)
    return size


# A trial records its figures only when it is one of the study's best (see plot_best_trials);
# the sweep's or the command line's `tracking.plots=true` records them for every trial.
TRIAL_DEFAULTS = ["tracking.plots=false"]


def trial_overrides(sweep: DictConfig, training: list[str],
                    params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A trial's overrides in two parts: those that may choose config groups (the sweep's, the
    command line's, its variant's and its searched groups'), then its searched `key=value`s."""
    composed, values = [*TRIAL_DEFAULTS, *sweep.overrides, *training], []
    for key, value in params.items():
        if key == "variant":
            composed += list(sweep.variants[value])
        else:
            (composed if key in CONFIG_GROUPS else values).append(f"{key}={value}")
    return composed, values


def check_space(sweep: DictConfig, training: list[str], distributions: dict[str, Any],
                checked_groups: dict[tuple[str, ...], DictConfig] | None = None) -> None:
    """Before any trial: every searched key exists, log-scale keys are searched on a log scale,
    and each value at the ends of its range gives a valid training config (the same checks as
    a command line's), that produces the sweep's metric and whose model, loss, optimizer and
    scheduler can be built. `checked_groups` keeps the configs checked so far by their
    group-choosing overrides, for the stages of one comparison."""
    from optuna.distributions import CategoricalDistribution

    checked_groups = {} if checked_groups is None else checked_groups
    base = checked_trial([*sweep.overrides, *training], checked_groups)
    for override in [*sweep.overrides, *training]:
        for key in (key for key in distributions if sets(override, key)):
            also = ", or set how many seeds with sweep.seeds=N" if key == SEED_KEY else ""
            raise UserError(f"{override}: the sweep searches {key} (space.{key}: "
                            f"{sweep.space[key]}), so each trial sets it. Drop the override"
                            f"{also}.")
    for key, distribution in distributions.items():
        if key not in CONFIG_GROUPS and OmegaConf.select(base, key, default=MISSING) is MISSING:
            raise UserError(
                f"space.{key} is not a key of the training config (sections: "
                f"{', '.join(str(k) for k in base)}); check the spelling."
            )
        if key in LOG_SCALE_KEYS and not isinstance(distribution, CategoricalDistribution) \
                and not distribution.log:
            raise UserError(
                f"space.{key} spans orders of magnitude: search it on a log scale, "
                f"tag(log, interval(low, high))."
            )
    for params in corner_params(distributions, sweep.variants):
        try:
            cfg = checked_trial(sum(trial_overrides(sweep, training, params), []), checked_groups)
            check_metric(sweep, cfg)
            build_trial(cfg)
        except UserError as error:
            raise UserError(f"The trial {params}: {error}") from None


def checked_trial(overrides: list[str],
                  checked_groups: dict[tuple[str, ...], DictConfig]) -> DictConfig:
    """A trial's config with a command line's checks, composed as Hydra does, with the config
    tree read once per choice of config groups and the `key=value`s applied on it (a tuned
    comparison has dozens of corners over a few choices). An override the quick path cannot
    take is checked whole, for the command line's message."""
    hydra_node.check_hydra_overrides(overrides)  # as check_overrides does: first, and for all
    chooses = [o.split("=")[0].lstrip("+~") in CONFIG_GROUPS for o in overrides]
    groups = [o for o, group in zip(overrides, chooses, strict=True) if group]
    values = [o for o, group in zip(overrides, chooses, strict=True) if not group]
    try:
        if tuple(groups) not in checked_groups:
            checked_groups[tuple(groups)] = check_overrides(groups)
        cfg = with_values(checked_groups[tuple(groups)], values)
        validate(cfg)
        check_no_credentials(cfg)
        return cfg
    except Exception:  # the whole check below names the problem
        return check_overrides(overrides)


def sets(override: str, key: str) -> bool:
    """Does this override set `key`, a value under it, or a mapping that holds it? Choosing a
    config group's option (`optimizer=adam`) leaves `optimizer.lr` to the sweep, and a value
    under a group (`loss.reduction=sum`) leaves the group's choice (`loss`) to it."""
    name = override.split("=", 1)[0].lstrip("+~")
    holds_key = key.startswith(f"{name}.") and name not in CONFIG_GROUPS
    under_key = name.startswith(f"{key}.") and key not in CONFIG_GROUPS
    return name == key or under_key or holds_key


def check_metric(sweep: DictConfig, cfg: DictConfig) -> None:
    metrics = Task.of(cfg.data).metrics
    if sweep.metric not in metrics:
        raise UserError(
            f"sweep.metric={sweep.metric} is not a metric of data={cfg.data.name}: choose one of "
            f"{', '.join(metrics)}."
        )


def build_trial(cfg: DictConfig) -> None:
    """Build the trial's model, loss, optimizer and scheduler on the data's shape (no data is
    loaded), as train() builds them."""
    from mlp_experiments import optim
    from mlp_experiments.config import policy

    in_features, num_outputs = model_shape(cfg)
    try:
        model = policy.instantiate(cfg.model, in_features=in_features, num_outputs=num_outputs)
        policy.instantiate(cfg.loss)
        optim.build_scheduler(cfg.scheduler,
                              optim.build_optimizer(cfg.optimizer, cfg.regularization, model))
    except UserError:
        raise
    except Exception as error:  # torch's own argument checks: TypeError, ValueError, ...
        raise UserError(f"it cannot be built: {' '.join(str(error).split())}") from None
