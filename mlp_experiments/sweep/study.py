"""A study in its Optuna storage: opened by each worker, counted under a lock so that workers
together run exactly `n_trials`, with heartbeats that fail and queue again a dead worker's trial."""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mlp_experiments.locks import once
from mlp_experiments.stores import sqlite_lock
from mlp_experiments.sweep.spec import make_pruner, make_sampler, storage_url

FINISHED_OUTCOMES = ("completed", "early_stopped", "pruned", "timeout", "diverged", "error")
FAILING_OUTCOMES = ("diverged", "error")  # the outcomes Optuna records as FAIL


# A worker records a heartbeat every HEARTBEAT_S; a RUNNING trial silent for STALE_AFTER_S
# (its worker was killed) is failed and queued again.
HEARTBEAT_S, STALE_AFTER_S = 5, 20


def make_storage(url: str, tracking_uri: str | None = None):
    """RDB storages (SQLite, PostgreSQL, MySQL) get heartbeats: a killed worker's trial is
    failed, its MLflow run (in `tracking_uri`) closed as lost, and the trial queued again."""
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
    """Optuna's heartbeat found a trial whose worker died: its run's journal goes to this
    process's sender, which closes the run as lost once it has sent what the worker journaled
    (it would stay RUNNING forever), and the trial is queued again; the retry resumes from the
    dead trial's checkpoint (see worker.TrialTrainer)."""

    def __init__(self, tracking_uri: str | None):
        self.tracking_uri = tracking_uri

    def __call__(self, study, trial) -> None:
        import optuna

        if self.tracking_uri and "journal" in trial.user_attrs:
            from mlp_experiments import tracking

            tracking.Sender.follow(Path(trial.user_attrs["journal"]))
        # Optuna's retry copies the trial's user attributes: mark which trial it takes over.
        marked = copy.copy(trial)
        marked.user_attrs = {**trial.user_attrs, "resumes": trial.number}
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, marked)


def follow_left_over(studies) -> None:
    """Send what an earlier command of these studies left unsent when it was killed: the
    records of its ended trials (a killed command's sender dies with it)."""
    from mlp_experiments import tracking

    for study in studies:
        for trial in study.get_trials(deepcopy=False):
            journal = trial.user_attrs.get("journal")
            if trial.state.is_finished() and journal and tracking.left_over(Path(journal)):
                tracking.Sender.follow(Path(journal))


def mlflow_run_of(trial) -> str | None:
    """The MLflow run of a trial: known when the trial ended, else once its journal reached
    MLflow (the sender marks it in the journal's folder)."""
    if "mlflow_run_id" in trial.user_attrs or "journal" not in trial.user_attrs:
        return trial.user_attrs.get("mlflow_run_id")
    from mlp_experiments import tracking

    return tracking.read_mark(Path(trial.user_attrs["journal"]))["run_id"]


def open_study(sweep: DictConfig, distributions: dict[str, Any], tracking_uri: str | None = None):
    """Create or load the study. Each opening (a resumed command, a worker, a command on another
    machine) seeds its sampler differently, in the order they open the study: two workers must
    not propose the same trials, and a resumed search must not repeat its first ones (a grid
    keeps the sweep's seed: make_sampler says why)."""
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


def lost_after_its_end(trial) -> bool:
    """Was the trial's worker killed after it noted the trial's outcome (completed, pruned, ...)
    but before Optuna marked the trial so? It is then FAIL with that outcome: like any lost
    trial it is queued again, and its retry, resumed from the last checkpoint, takes its place."""
    from optuna.trial import TrialState

    outcome = trial.user_attrs.get("outcome")
    return trial.state == TrialState.FAIL and outcome in FINISHED_OUTCOMES \
        and outcome not in FAILING_OUTCOMES


def ended_on_its_own(trial) -> bool:
    """Did the trial end by itself, not with its worker?"""
    return trial.user_attrs.get("outcome") in FINISHED_OUTCOMES and not lost_after_its_end(trial)


def ended_trials(study) -> list:
    """The trials that ended on their own (a heartbeat-failed one is queued again instead)."""
    return [t for t in study.get_trials(deepcopy=False) if ended_on_its_own(t)]


def closed_trials(study) -> list:
    """The ended trials that Optuna has closed too. A worker notes a trial's outcome, then tells
    Optuna; killed in between, it leaves the trial RUNNING until its heartbeat fails it and a
    retry takes its place."""
    from optuna.trial import TrialState

    return [t for t in ended_trials(study) if t.state != TrialState.RUNNING]


def counted_trials(study) -> int:
    """Trials that count toward n_trials: running or queued ones, and finished ones that ended
    on their own (a heartbeat-failed trial does not count: it is queued again)."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.RUNNING, TrialState.WAITING) or ended_on_its_own(t)
               for t in study.get_trials(deepcopy=False))


@contextmanager
def budget_lock(url: str, name: str):
    """Workers take turns between counting trials and starting one, so that together they run
    exactly n_trials: a file lock beside a SQLite file, a PostgreSQL advisory lock (which spans
    machines) for a PostgreSQL storage. Yields the function that releases it early."""
    if url.startswith("postgresql"):
        with _advisory_lock(url, name) as release:
            yield release
    else:
        with sqlite_lock(url) as release:
            yield release


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
