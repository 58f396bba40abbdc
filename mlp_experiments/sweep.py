"""`python -m mlp_experiments.sweep sweep=<name> [sweep.key=value] [training overrides]`

Runs the Optuna study that `sweeps/<name>.yaml` describes. Every trial trains in-process through
`train()`, reports its validation metric each epoch to the pruner and is an MLflow child run of
the study's parent run. Running the command again resumes the study until `n_trials` trials
have finished in total; `sweep.n_workers=K` runs K worker processes on the same storage.
"""

from __future__ import annotations

import copy
import inspect
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from mlp_experiments.config import (
    CONF_DIR,
    CONFIG_GROUPS,
    UserError,
    check_overrides,
    compose_config,
    config_hash,
    data_task,
    model_shape,
    register_configs,
    with_values,
)
from mlp_experiments.locks import file_lock, once
from mlp_experiments.redact import redact

log = logging.getLogger("mlp_experiments.sweep")
SWEEPS_DIR = CONF_DIR.parent / "sweeps"
DEFAULT_STORAGE = "sqlite:///optuna.db"
# Keys whose sensible values span orders of magnitude: a linear search wastes most trials.
LOG_SCALE_KEYS = {"optimizer.lr", "regularization.weight_decay", "regularization.l2_penalty",
                  "regularization.l1_penalty"}
FINISHED_OUTCOMES = ("completed", "early_stopped", "pruned", "timeout", "diverged", "error")
# A worker records a heartbeat every HEARTBEAT_S; a RUNNING trial silent for STALE_AFTER_S
# (its worker was killed) is failed and queued again.
HEARTBEAT_S, STALE_AFTER_S = 5, 20
# A study's name names files and folders (docs/<study>/, conf/experiment/<study>_best.yaml).
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random", "grid")
BEST_TRIALS_PLOTTED = 3
STORAGE_SCHEME = re.compile(r"(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://")


@dataclass
class SweepConfig:
    study_name: str = MISSING
    overrides: list[str] = field(default_factory=list)  # training overrides for every trial
    space: dict[str, str] = field(default_factory=dict)  # key -> Hydra sweep expression
    variants: dict[str, list[str]] = field(default_factory=dict)  # comparisons: name -> overrides
    metric: str = "val_acc"
    direction: str = "maximize"
    sampler: str = "tpe"  # tpe, random or grid
    pruner: str = "median"  # none, median, successive_halving, hyperband or threshold
    pruner_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the sampler's
    n_trials: int | None = None  # None: the size of the grid
    timeout: float | None = None  # seconds, for this command
    storage: str | None = None  # any Optuna storage URL; None: sqlite:///optuna.db
    n_workers: int = 1


# ---------------------------------------------------------------------------- configuration


def split_arguments(arguments: list[str]) -> tuple[str, list[str], list[str]]:
    """(sweep name, sweep.* overrides, training overrides) from the command line."""
    name, sweep_overrides, training = None, [], []
    for argument in arguments:
        if argument.startswith("sweep="):
            name = argument.split("=", 1)[1]
        elif argument.startswith("sweep."):
            sweep_overrides.append(argument.removeprefix("sweep."))
        else:
            training.append(argument)
    if name is None:
        available = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise UserError(f"Name the sweep: sweep=<name>, one of: {available}.")
    return name, sweep_overrides, training


def load_sweep(name: str, overrides: list[str]) -> DictConfig:
    """sweeps/<name>.yaml, or the YAML file `name` points at."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise UserError(f"No sweep '{name}' in {SWEEPS_DIR}: choose one of {available}.")
    schema = OmegaConf.structured(SweepConfig)
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.load(path), OmegaConf.from_dotlist(overrides))
    except Exception as error:  # OmegaConf names the key and the expected type
        raise UserError(f"Sweep '{name}': {error}") from None
    if not cfg.space and not cfg.variants:
        raise UserError(f"Sweep '{name}' has neither a space nor variants to try.")
    check_settings(cfg)
    return cfg


def check_settings(sweep: DictConfig) -> None:
    """The sweep's own settings, each with one message (the training overrides are checked
    with the trials, by check_space)."""
    name = sweep.study_name
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"sweep.study_name={name!r}: it names files and folders (docs/<study>/, "
            f"conf/experiment/<study>_best.yaml), so it may only hold letters, digits, '_', '.' "
            f"and '-', start with a letter or digit and not contain '..'."
        )
    if sweep.n_workers < 1:
        raise UserError(f"sweep.n_workers={sweep.n_workers} must be at least 1.")
    if sweep.direction not in DIRECTIONS:
        raise UserError(f"sweep.direction={sweep.direction}: choose {' or '.join(DIRECTIONS)}.")
    if sweep.sampler not in SAMPLERS:
        raise UserError(f"sweep.sampler={sweep.sampler}: choose one of {', '.join(SAMPLERS)}.")
    make_pruner(sweep)
    storage_url(sweep)


# ---------------------------------------------------------------------------- search space


def parse_space(space: dict[str, str]) -> dict[str, Any]:
    """Map Hydra sweep expressions to Optuna distributions, with Hydra's own override parser
    (the grammar of Hydra's Optuna sweeper plugin)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    distributions = {}
    for key, expression in space.items():
        try:
            (override,) = parser.parse_overrides([f"{key}={expression}"])
        except Exception as error:
            raise UserError(f"space.{key}: cannot parse '{expression}': {error}") from None
        distributions[key] = to_distribution(key, expression, override)
    return distributions


def to_distribution(key: str, expression: str, override) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution([choice_value(v) for v in value.list])
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)) and step > 0 and stop > start:
            last = start + (stop - start - 1) // step * step  # range() excludes stop
            return IntDistribution(start, last, step=step)
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise UserError(
        f"space.{key}: '{expression}' is not a search expression we can map: use "
        f"choice(...), range(start, stop[, step]), interval(low, high) or "
        f"tag(log, interval(low, high))."
    )


def choice_value(value: Any) -> Any:
    """Optuna's categorical choices are scalars: a list choice travels as its override text."""
    if isinstance(value, dict):
        raise UserError(f"choice({value}): dictionaries cannot be searched; choose list items.")
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return value


def suggest(trial, key: str, distribution) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high,
                                 step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, log=distribution.log)


def grid_of(distributions: dict[str, Any], variants: dict) -> dict[str, list]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    grid = {"variant": list(variants)} if variants else {}
    for key, distribution in distributions.items():
        if isinstance(distribution, CategoricalDistribution):
            grid[key] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution) and not distribution.log:
            grid[key] = list(range(distribution.low, distribution.high + 1, distribution.step))
        else:
            raise UserError(
                f"space.{key}: a grid needs choice(...) or range(...), not an interval."
            )
    return grid


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


def check_space(sweep: DictConfig, training: list[str], distributions: dict[str, Any]) -> None:
    """Before any trial: every searched key exists, log-scale keys are searched on a log scale,
    and each value at the ends of its range gives a valid training config (the same checks as
    a command line's), that produces the sweep's metric and whose model, loss, optimizer and
    scheduler can be built."""
    from optuna.distributions import CategoricalDistribution

    base = check_overrides([*sweep.overrides, *training])
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
            cfg = check_overrides(sum(trial_overrides(sweep, training, params), []))
            check_metric(sweep, cfg)
            build_trial(cfg)
        except UserError as error:
            raise UserError(f"The trial {params}: {error}") from None


def check_metric(sweep: DictConfig, cfg: DictConfig) -> None:
    from mlp_experiments.losses import Scoring

    regression = data_task(cfg.data)[0] == "regression"
    scores = ("loss", *Scoring(regression=regression).names)
    metrics = [f"{split}_{score}" for split in ("train", "val", "test") for score in scores]
    metrics += ["lr", "epoch_time_s", "samples_per_s"]
    if sweep.metric not in metrics:
        raise UserError(
            f"sweep.metric={sweep.metric} is not a metric of data={cfg.data.name}: choose one of "
            f"{', '.join(metrics)}."
        )


def build_trial(cfg: DictConfig) -> None:
    """Build the trial's model, loss, optimizer and scheduler on the data's shape (no data is
    loaded), as train() builds them."""
    from mlp_experiments import optim, policy

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


def corner_params(distributions: dict[str, Any], variants: dict) -> list[dict[str, Any]]:
    """One trial per value at the ends of every dimension (every choice, every variant)."""
    from optuna.distributions import CategoricalDistribution

    middle = {k: (d.choices[0] if isinstance(d, CategoricalDistribution) else d.low)
              for k, d in distributions.items()}
    corners = []
    for key, distribution in distributions.items():
        values = (distribution.choices if isinstance(distribution, CategoricalDistribution)
                  else (distribution.low, distribution.high))
        corners += [{**middle, key: value} for value in values]
    for name in variants or [None]:
        corners.append({**middle, **({"variant": name} if name else {})})
    return corners


# ---------------------------------------------------------------------------- study


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


def make_storage(url: str, tracking_uri: str | None = None):
    """RDB storages (SQLite, PostgreSQL, MySQL) get heartbeats: a killed worker's trial is
    failed, its MLflow run (in `tracking_uri`) marked FAILED, and the trial queued again."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats are marked experimental since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=STALE_AFTER_S,
            heartbeat_stale_trial_callback=LostTrial(tracking_uri),
        )


class LostTrial:
    """Optuna's heartbeat found a trial whose worker died: close its MLflow run as FAILED
    (it would stay RUNNING forever) and queue the trial again; the retry resumes from the
    dead trial's checkpoint (see Objective)."""

    def __init__(self, tracking_uri: str | None):
        self.tracking_uri = tracking_uri

    def __call__(self, study, trial) -> None:
        import optuna

        run_id = trial.user_attrs.get("mlflow_run_id")
        if self.tracking_uri and run_id:
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
            # A worker killed after its run ended (before Optuna heard) left it true already.
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "outcome", "worker_lost")
                client.set_terminated(run_id, "FAILED")
        # Optuna's retry copies the trial's user attributes: mark which trial it takes over.
        marked = copy.copy(trial)
        marked.user_attrs = {**trial.user_attrs, "resumes": trial.number}
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, marked)


def make_sampler(sweep: DictConfig, distributions: dict[str, Any], seed: int):
    import optuna

    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler(grid_of(distributions, sweep.variants), seed=seed)
    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"sweep.sampler={sweep.sampler}: choose tpe, random or grid.")


def make_pruner(sweep: DictConfig):
    import optuna

    pruners = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "threshold": optuna.pruners.ThresholdPruner,  # prunes below pruner_args.lower
    }
    if sweep.pruner not in pruners:
        raise UserError(f"sweep.pruner={sweep.pruner}: choose one of {', '.join(pruners)}.")
    if sweep.pruner == "none":  # pruner_args belong to the pruner the sweep file names
        return pruners["none"]()
    pruner = pruners[sweep.pruner]
    takes = list(inspect.signature(pruner).parameters)
    unknown = sorted(set(sweep.pruner_args) - set(takes))
    if unknown:
        raise UserError(
            f"sweep.pruner_args: {', '.join(unknown)} is not a parameter of the {sweep.pruner} "
            f"pruner ({pruner.__name__}): it takes {', '.join(takes)}."
        )
    try:
        return pruner(**sweep.pruner_args)
    except (TypeError, ValueError) as error:
        raise UserError(f"sweep.pruner_args: {error}") from None


def open_study(sweep: DictConfig, distributions: dict[str, Any], tracking_uri: str | None = None):
    """Create or load the study. Each opening (a resumed command, a worker, a command on another
    machine) seeds its sampler differently, in the order they open the study: two workers must
    not propose the same trials, and a resumed search must not repeat its first ones."""
    import optuna

    # Workers starting at once would race to create the storage's tables and the study.
    with budget_lock(storage_url(sweep), "storage"):
        storage = make_storage(storage_url(sweep), tracking_uri)
        study = optuna.create_study(study_name=sweep.study_name, storage=storage,
                                    direction=sweep.direction, load_if_exists=True)
        opened = study.user_attrs.get("samplers_seeded", 0)
        study.set_user_attr("samplers_seeded", opened + 1)
    return optuna.load_study(study_name=sweep.study_name, storage=storage,
                             sampler=make_sampler(sweep, distributions, sweep.seed + 1000 * opened),
                             pruner=make_pruner(sweep))


def budget(sweep: DictConfig, distributions: dict[str, Any]) -> int:
    if sweep.n_trials is not None:
        return sweep.n_trials
    if sweep.sampler != "grid":
        raise UserError("sweep.n_trials is needed unless sweep.sampler=grid.")
    size = 1
    for values in grid_of(distributions, sweep.variants).values():
        size *= len(values)
    return size


def more_to_run(study, n_trials: int) -> bool:
    """Fail the trials of killed workers first (which queues their retries), then: is a trial
    queued, or is the budget not yet reached?"""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():  # experimental since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return True
    return counted_trials(study) < n_trials


def counted_trials(study) -> int:
    """Trials that count toward n_trials: running or queued ones, and finished ones that ended
    on their own (a heartbeat-failed trial does not count: it is queued again)."""
    from optuna.trial import TrialState

    count = 0
    for trial in study.get_trials(deepcopy=False):
        running = trial.state in (TrialState.RUNNING, TrialState.WAITING)
        if running or trial.user_attrs.get("outcome") in FINISHED_OUTCOMES:
            count += 1
    return count


@contextmanager
def budget_lock(url: str, name: str):
    """Workers take turns between counting trials and starting one, so that together they run
    exactly n_trials: a file lock beside a SQLite file, a PostgreSQL advisory lock (which spans
    machines) for a PostgreSQL storage. Yields the function that releases it early."""
    if url.startswith("postgresql"):
        with _advisory_lock(url, name) as release:
            yield release
    elif url.startswith("sqlite:///"):
        with file_lock(Path(url.removeprefix("sqlite:///") + ".lock")) as release:
            yield release
    else:
        yield lambda: None


@contextmanager
def _advisory_lock(url: str, name: str):
    import zlib

    import sqlalchemy

    key = zlib.crc32(f"mlp_experiments:{name}".encode())
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        unlock = once(lambda: connection.execute(
            sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key}))
        try:
            yield unlock
        finally:
            unlock()
    engine.dispose()


# ---------------------------------------------------------------------------- trials


class Objective:
    """One Optuna trial = one training run in its own MLflow child run, reporting each epoch to
    the pruner. A trial that retries a lost or interrupted one resumes from its checkpoint."""

    def __init__(self, sweep: DictConfig, training: list[str], distributions: dict[str, Any],
                 parent_run_id: str | None, deadline: float | None):
        self.sweep, self.training = sweep, training
        self.distributions, self.parent_run_id = distributions, parent_run_id
        self.deadline = deadline  # time.time() at which running trials stop (sweep.timeout)
        self.release_budget = lambda: None
        self.composed: dict[tuple[str, ...], DictConfig] = {}  # per choice of config groups

    def __call__(self, trial) -> float:
        import optuna

        self.release_budget()  # this trial is RUNNING now: other workers may count it
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            params = {"variant": trial.suggest_categorical("variant", list(self.sweep.variants))}\
                if self.sweep.variants else {}
            params |= {key: suggest(trial, key, d) for key, d in self.distributions.items()}
            composed, values = trial_overrides(self.sweep, self.training, params)
            trial.set_user_attr("overrides", [redact(o) for o in (*composed, *values)])
            return self.train(trial, self.config(composed, values))
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("outcome", "interrupted")
            # Queued again: the next command resumes it from its checkpoint.
            trial.study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number})
            raise
        except Exception:
            trial.set_user_attr("outcome", "error")
            raise

    def config(self, composed: list[str], values: list[str]) -> DictConfig:
        """The trial's config: what compose_config([*composed, *values]) gives, with the
        config tree read once per choice of config groups."""
        key = tuple(composed)
        if key not in self.composed:
            self.composed[key] = compose_config(composed)
        return with_values(self.composed[key], values)

    def train(self, trial, cfg: DictConfig) -> float:
        import optuna

        from mlp_experiments import data, engine
        from mlp_experiments.train import train

        run_hash = config_hash(cfg, data.release_digest(cfg.data))
        trial.set_user_attr("config_hash", run_hash)
        earlier = self.finished_with_hash(trial.study, run_hash)
        if earlier is not None:
            trial.set_user_attr("reused_from", earlier.number)
            trial.set_user_attr("history", earlier.user_attrs.get("history", []))
            trial.set_user_attr("outcome", earlier.user_attrs["outcome"])
            return earlier.value
        cfg.trainer.resume = resumed_trial(trial) is not None
        run_id = None
        if cfg.tracking.enabled:
            from mlp_experiments import recorder

            run_name = f"{self.sweep.study_name}-{trial.number}"
            run_id = recorder.create_run(cfg.tracking, run_name, self.parent_run_id)
            trial.set_user_attr("mlflow_run_id", run_id)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[self.sweep.metric], epoch)
            if trial.should_prune():
                raise engine.StopTraining("pruned")
            if self.deadline is not None and time.time() >= self.deadline:
                raise engine.StopTraining("timeout")

        result = train(cfg, hooks=(report,), run_id=run_id)
        if result.run_id != run_id:  # it had ended before (its lost worker finished it)
            trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("history", result.history)
        trial.set_user_attr("outcome", result.outcome)
        if result.outcome in ("pruned", "timeout"):
            raise optuna.TrialPruned()
        if result.outcome == "diverged":
            return float("nan")  # Optuna records the trial as FAIL, and the sweep goes on
        return result.best(self.sweep.metric, maximize=self.sweep.direction == "maximize")

    @staticmethod
    def finished_with_hash(study, run_hash: str):
        from optuna.trial import TrialState

        for earlier in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if earlier.user_attrs.get("config_hash") == run_hash:
                return earlier
        return None


def resumed_trial(trial) -> int | None:
    """The number of the trial this one takes over: one whose worker was lost (queued by
    LostTrial) or one interrupted by Ctrl-C (queued by Objective)."""
    return trial.user_attrs.get("resumes")


def work(sweep: DictConfig, training: list[str], parent_run_id: str | None,
         tracking_uri: str | None, torch_threads: int, deadline: float | None) -> None:
    """A worker: start trials until the study has its n_trials (or the deadline passes). With
    the budget reached it stays while other trials run: if their worker was killed, it fails
    them once their heartbeat is stale and runs the retries, so no trial is lost."""
    import optuna
    import torch
    from optuna.trial import TrialState

    torch.set_num_threads(torch_threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = parse_space(sweep.space)
    study = open_study(sweep, distributions, tracking_uri)
    objective = Objective(sweep, training, distributions, parent_run_id, deadline)
    n_trials = budget(sweep, distributions)
    while deadline is None or time.time() < deadline:
        with budget_lock(storage_url(sweep), sweep.study_name) as release:
            if more_to_run(study, n_trials):
                objective.release_budget = release
                study.optimize(objective, n_trials=1, catch=(Exception,))
                continue
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(HEARTBEAT_S)


# A search's best preset goes under the working directory, never into the package or conf/, and
# `train -cd PRESETS_DIR` adds that folder to Hydra's config search path. Hydra searches it after
# the package's own conf/, so the presets are options of a subfolder of the experiment group that
# conf/ does not have: a study cannot be shadowed by a shipped preset of the same name.
PRESETS_DIR = Path("outputs") / "presets"


def best_preset_name(study_name: str) -> str:
    return f"best/{study_name}"


def best_preset_path(study_name: str) -> Path:
    return PRESETS_DIR / "experiment" / f"{best_preset_name(study_name)}.yaml"


def best_preset_command(study_name: str) -> str:
    return (f"python -m mlp_experiments.train -cd {PRESETS_DIR} "
            f"experiment={best_preset_name(study_name)}")


def preset_yaml(overrides: list[str], comment: str) -> str:
    """An `experiment` preset that composes to the same config as these overrides (less where
    runs are recorded: tracking settings stay the user's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    defaults, values = [], OmegaConf.create()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("tracking"):
            continue
        if key == "experiment":
            defaults.append(f"/experiment/{override.value()}")
        elif key in CONFIG_GROUPS:
            defaults.append({f"override /{key}": override.value()})
        else:
            OmegaConf.update(values, key, override.value(), force_add=True)
    body = OmegaConf.create({"defaults": defaults} if defaults else {})
    body = OmegaConf.merge(body, values)
    lines = ["# @package _global_", *(f"# {line}" for line in comment.splitlines())]
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(body)


def write_best_preset(study, sweep: DictConfig) -> Path:
    """The best trial as `best_preset_path(study)`, ready for `best_preset_command(study)`."""
    best = study.best_trial
    comment = (f"Best trial ({best.number}) of the study {sweep.study_name}: "
               f"{sweep.metric} {best.value:.4f}.\nWritten by mlp_experiments.sweep; "
               f"the test accuracy was not used to choose it.\n"
               f"Train it: {best_preset_command(sweep.study_name)}")
    path = best_preset_path(sweep.study_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Every sweep command of a study writes it when it ends, some while others read it: whole.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(preset_yaml(best.user_attrs["overrides"], comment))
    partial.replace(path)
    return path


# ---------------------------------------------------------------------------- the command


def print_plan(sweep: DictConfig, distributions: dict, study, n_trials: int, training) -> None:
    done = counted_trials(study)
    lines = [
        f"study {sweep.study_name} in {redact(storage_url(sweep))}",
        f"  objective: {sweep.direction} {sweep.metric}",
        f"  sampler {sweep.sampler} (seed {sweep.seed}), pruner {sweep.pruner} "
        f"{dict(sweep.pruner_args) or ''}",
        f"  trials: {n_trials} in total, {done} already there, {max(n_trials - done, 0)} to run "
        f"on {sweep.n_workers} worker(s)",
        f"  fixed overrides: {redact(' '.join([*sweep.overrides, *training])) or '(none)'}",
    ]
    lines += [f"  variant {name}: {' '.join(o)}" for name, o in sweep.variants.items()]
    lines += [f"  {key}: {sweep.space[key]} -> {d}" for key, d in distributions.items()]
    print("\n".join(lines), flush=True)


def run_sweep(arguments: list[str]):
    """Plan, check, run the workers, write a search's best preset, then summarise the study in
    its MLflow parent run."""
    register_configs()
    name, sweep_overrides, training = split_arguments(arguments)
    sweep = load_sweep(name, sweep_overrides)
    deadline = time.time() + sweep.timeout if sweep.timeout else None
    distributions = parse_space(sweep.space)
    check_space(sweep, training, distributions)
    base = compose_config([*sweep.overrides, *training])
    tracking_uri = base.tracking.uri if base.tracking.enabled else None
    study = open_study(sweep, distributions, tracking_uri)
    kind = "comparison" if sweep.sampler == "grid" else "search"
    study.set_user_attr("kind", kind)
    study.set_user_attr("metric", sweep.metric)
    n_trials = budget(sweep, distributions)
    print_plan(sweep, distributions, study, n_trials, training)
    parent_run_id = None
    if tracking_uri:  # one parent run, also when several commands start at once
        from mlp_experiments import recorder

        with budget_lock(storage_url(sweep), sweep.study_name):
            parent_run_id = recorder.study_parent_run(base.tracking, study, sweep)
    lost_workers = launch_workers(sweep, training, parent_run_id, tracking_uri, deadline)
    ended = [t for t in study.get_trials(deepcopy=False)
             if t.user_attrs.get("outcome") in FINISHED_OUTCOMES]
    if lost_workers and len(ended) < n_trials and not past(deadline):
        raise UserError(
            f"{len(ended)} of {n_trials} trials ended and {lost_workers} worker(s) died (see "
            f"their output): run the same command again to finish the study."
        )
    preset = publish_best_preset(study, sweep, kind)
    if parent_run_id:
        from mlp_experiments import report

        plot_best_trials(study, kind, tracking_uri)
        report.summarise_in_mlflow(study, sweep, base.tracking, parent_run_id, preset)
    if ended and all(t.user_attrs["outcome"] in ("error", "diverged") for t in ended):
        raise UserError(
            f"Every trial of study {sweep.study_name} failed ({len(ended)}): the errors are "
            f"in the output above and in each trial's MLflow run."
        )
    return study


def plot_best_trials(study, kind: str, tracking_uri: str) -> None:
    """Draw the figures of the trials that matter once the study ran, from their MLflow records:
    a search's best BEST_TRIALS_PLOTTED, a comparison's best trial of each variant (the report
    in the parent run has each variant's mean). Runs that have their figures are left alone."""
    import mlflow
    from optuna.trial import TrialState

    from mlp_experiments import evaluate

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.user_attrs.get("mlflow_run_id") and "reused_from" not in t.user_attrs]
    trials.sort(key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
    if kind == "comparison":
        best_of_variant = {}
        for trial in trials:
            best_of_variant.setdefault(trial.params.get("variant"), trial)
        chosen = list(best_of_variant.values())
    else:
        chosen = trials[:BEST_TRIALS_PLOTTED]
    client = mlflow.MlflowClient(tracking_uri)
    for trial in chosen:
        run_id = trial.user_attrs["mlflow_run_id"]
        if not client.list_artifacts(run_id, "plots"):
            evaluate.log_run_figures(tracking_uri, run_id, trial.user_attrs["history"])


def past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def publish_best_preset(study, sweep: DictConfig, kind: str) -> Path | None:
    """A search with a completed trial: write its best preset and print how to train it. (A
    comparison's best trial is one seed of one variant: no configuration to recommend.)"""
    from optuna.trial import TrialState

    if kind != "search" or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    preset = write_best_preset(study, sweep)
    print(f"best configuration: {preset}\ntrain it: {best_preset_command(sweep.study_name)}",
          flush=True)
    return preset


def launch_workers(sweep: DictConfig, training: list[str], parent_run_id: str | None,
                   tracking_uri: str | None, deadline: float | None) -> int:
    """Run the workers; return how many died (a killed worker's trial is retried by the others,
    so the study can still be complete)."""
    import torch

    # Oversubscribed OpenMP threads spin against each other: give each worker its share of
    # the threads torch would use (os.cpu_count(), or OMP_NUM_THREADS when set).
    threads = max(1, torch.get_num_threads() // sweep.n_workers)
    if sweep.n_workers == 1:
        work(sweep, training, parent_run_id, tracking_uri, threads, deadline)
        return 0
    context = multiprocessing.get_context("spawn")
    sweep_container = OmegaConf.to_container(sweep)
    workers = [
        context.Process(target=_worker_main,
                        args=(sweep_container, training, parent_run_id, tracking_uri, threads,
                              deadline, index))
        for index in range(sweep.n_workers)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:  # Ctrl-C reached us alone (not the terminal's process group)
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGINT)
        for worker in workers:
            worker.join()
        raise
    lost = [w.exitcode for w in workers if w.exitcode]
    if lost:
        log.warning("%d worker(s) exited with codes %s", len(lost), lost)
    return len(lost)


def _worker_main(sweep_container: dict, training: list[str], parent_run_id: str | None,
                 tracking_uri: str | None, threads: int, deadline: float | None,
                 index: int) -> None:
    register_configs()
    logging.basicConfig(level=logging.INFO, format=f"[worker {index}] %(message)s")
    sweep = OmegaConf.merge(OmegaConf.structured(SweepConfig), sweep_container)
    try:
        work(sweep, training, parent_run_id, tracking_uri, threads, deadline)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run_sweep(sys.argv[1:])
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the study (the interrupted "
              "trial continues from its checkpoint)", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
