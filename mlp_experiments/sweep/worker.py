"""The workers of a sweep: each starts trials until the study has its `n_trials`; a trial
trains through `train()` in its own MLflow child run and reports every epoch to the pruner."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlp_experiments import cluster
from mlp_experiments.config.compose import compose_config, with_values
from mlp_experiments.config.registry import register_configs
from mlp_experiments.errors import Terminated, interrupted_exit_code, stop_on_signals
from mlp_experiments.redact import redact
from mlp_experiments.sweep.space import parse_space, suggest
from mlp_experiments.sweep.spec import (
    SEED_KEY,
    SweepConfig,
    budget,
    storage_url,
    trial_overrides,
)
from mlp_experiments.sweep.study import HEARTBEAT_S, budget_lock, more_to_run, open_study

log = logging.getLogger("mlp_experiments.sweep")

# The MLflow run a sweep's trials nest under: a run id, or one per variant (the evaluation stage
# of a staged comparison, sweep/stages.py); None without tracking.
ParentRun = str | dict[str, str] | None


def past(deadline: float | None) -> bool:
    """Has sweep.timeout's deadline (a time.time()) passed? Never, without one."""
    return deadline is not None and time.time() >= deadline


class TrialTrainer:
    """One Optuna trial = one training run in its own MLflow child run, reporting each epoch to
    the pruner. A trial that retries a lost or interrupted one resumes from its checkpoint."""

    def __init__(self, sweep: DictConfig, training: list[str], distributions: dict[str, Any],
                 parent_run_id: ParentRun, tracking_uri: str | None, deadline: float | None):
        self.sweep, self.training, self.tracking_uri = sweep, training, tracking_uri
        self.distributions, self.parent_run_id = distributions, parent_run_id
        self.deadline = deadline  # time.time() at which running trials stop (sweep.timeout)
        self.release_budget = lambda: None
        self.n_trials = budget(sweep, distributions)
        self.composed: dict[tuple[str, ...], DictConfig] = {}  # per choice of config groups

    def __call__(self, trial) -> float:
        import optuna

        self.release_budget()  # this trial is RUNNING now: other workers may count it
        slurm_job = cluster.slurm_job_id()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}"
                                      + (f" (Slurm job {slurm_job})" if slurm_job else ""))
        try:
            params = {"variant": trial.suggest_categorical("variant", list(self.sweep.variants))}\
                if self.sweep.variants else {}
            params |= {key: suggest(trial, key, d) for key, d in self.distributions.items()}
            composed, values = trial_overrides(self.sweep, self.training, params)
            trial.set_user_attr("overrides", [redact(o) for o in (*composed, *values)])
            log.info("trial %d/%d  %s", trial.number, self.n_trials, describe(params))
            value = self.train(trial, self.config(composed, values), params)
            log.info("trial %d %s: %s %.4f", trial.number, trial.user_attrs["outcome"],
                     self.sweep.metric, value)
            return value
        except optuna.TrialPruned:
            log.info("trial %d %s after epoch %d", trial.number, trial.user_attrs["outcome"],
                     len(trial.user_attrs["history"]))
            raise
        except (KeyboardInterrupt, SystemExit) as stop:
            # Ctrl-C, or submitit's exit once it had Slurm requeue the job (a time limit, a
            # preemption). Queued again: the next worker resumes it from its checkpoint.
            trial.set_user_attr("outcome", "interrupted")
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id:  # stopped before its training opened the run, or while it closed it
                from mlp_experiments import recorder

                recorder.end_if_running(self.tracking_uri, run_id, "interrupted")
            trial.study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number})
            if isinstance(stop, SystemExit):  # Optuna records only a KeyboardInterrupt's trial
                trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
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

    def train(self, trial, cfg: DictConfig, params: dict[str, Any]) -> float:
        import optuna

        from mlp_experiments import engine
        from mlp_experiments.train import config_identity, train

        run_hash = config_identity(cfg)
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

            run_id = recorder.create_run(cfg.tracking, self.run_name(trial, params),
                                         self.parent_of(params))
            trial.set_user_attr("mlflow_run_id", run_id)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[self.sweep.metric], epoch)
            if trial.should_prune():
                raise engine.StopTraining("pruned")
            if past(self.deadline):
                raise engine.StopTraining("timeout")

        cpu_started = time.process_time()
        result = train(cfg, hooks=(report,), run_id=run_id, run_hash=run_hash,
                       overrides=trial.user_attrs["overrides"])
        trial.set_user_attr("cpu_s", time.process_time() - cpu_started)
        if result.run_id != run_id:  # it had ended before (its lost worker finished it)
            trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("history", result.history)
        trial.set_user_attr("outcome", result.outcome)
        if result.outcome in ("pruned", "timeout"):
            raise optuna.TrialPruned()
        if result.outcome == "diverged":
            return float("nan")  # Optuna records the trial as FAIL, and the sweep goes on
        return result.best(self.sweep.metric, maximize=self.sweep.direction == "maximize")

    def run_name(self, trial, params: dict[str, Any]) -> str:
        """What differs: `adam-seed3` for a comparison's run, else `<study>-<trial number>`."""
        if "variant" in params and SEED_KEY in params:
            return f"{params['variant']}-seed{params[SEED_KEY]}"
        return f"{self.sweep.study_name}-{trial.number}"

    def parent_of(self, params: dict[str, Any]) -> str | None:
        """The MLflow run the trial's run nests under: a staged comparison's evaluation runs
        nest under their variant's run (`parent_run_id` maps variants to runs there)."""
        if isinstance(self.parent_run_id, dict):
            return self.parent_run_id[params["variant"]]
        return self.parent_run_id

    @staticmethod
    def finished_with_hash(study, run_hash: str):
        from optuna.trial import TrialState

        for earlier in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if earlier.user_attrs.get("config_hash") == run_hash:
                return earlier
        return None


def describe(params: dict[str, Any]) -> str:
    """`variant=adam trainer.seed=1`, or a search's sampled values."""
    return "  ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def resumed_trial(trial) -> int | None:
    """The number of the trial this one takes over: one whose worker was lost (queued by
    LostTrial) or one interrupted by Ctrl-C (queued by TrialTrainer)."""
    return trial.user_attrs.get("resumes")


def work(sweep: DictConfig, training: list[str], parent_run_id: ParentRun,
         tracking_uri: str | None, torch_threads: int, deadline: float | None) -> None:
    """A worker: start trials until the study has its n_trials (or the deadline passes). With
    the budget reached it stays while other trials run: if their worker was killed, it fails
    them once their heartbeat is stale and runs the retries, so no trial is lost."""
    import optuna
    import torch
    from optuna.trial import TrialState

    torch.set_num_threads(torch_threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna logs a trial stopped by Ctrl-C or SIGTERM with the traceback of the interruption;
    # the command says it in one line (the record comes from the module's own logger).
    logging.getLogger("optuna.study._optimize").addFilter(not_an_interruption)
    distributions = parse_space(sweep.space)
    study = open_study(sweep, distributions, tracking_uri)
    trainer = TrialTrainer(sweep, training, distributions, parent_run_id, tracking_uri,
                           deadline)
    n_trials = budget(sweep, distributions)
    with trial_lines_only():
        while not past(deadline):
            with budget_lock(storage_url(sweep), sweep.study_name) as release:
                if more_to_run(study, n_trials):
                    trainer.release_budget = release
                    study.optimize(trainer, n_trials=1, catch=(Exception,))
                    continue
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return
            time.sleep(HEARTBEAT_S)


@contextmanager
def trial_lines_only() -> Iterator[None]:
    """What each trial's run says of itself (its data, how it ended, its MLflow run) is left
    to the trial's own lines while the trials run; restored after, for the process goes on."""
    run_log = logging.getLogger("mlp_experiments.run")
    level = run_log.level
    run_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        run_log.setLevel(level)


def not_an_interruption(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def launch_workers(sweep: DictConfig, training: list[str], parent_run_id: ParentRun,
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
        context.Process(target=run_worker,
                        args=(sweep_container, training, parent_run_id, tracking_uri, threads,
                              deadline, index))
        for index in range(sweep.n_workers)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM reached us alone, not the workers
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM if isinstance(stop, Terminated)
                        else signal.SIGINT)
        for worker in workers:
            worker.join()
        raise
    lost = [w.exitcode for w in workers if w.exitcode]
    if lost:
        log.warning("%d worker(s) exited with codes %s", len(lost), lost)
    return len(lost)


def run_worker(sweep_container: dict, training: list[str], parent_run_id: ParentRun,
               tracking_uri: str | None, threads: int, deadline: float | None,
               index: int) -> None:
    """A worker in a process of its own (a spawned process, a Slurm array task): the sweep
    arrives as plain data, its log lines say which worker wrote them."""
    register_configs()
    logging.basicConfig(level=logging.INFO, format=f"[worker {index}] %(message)s")
    if cluster.slurm_job_id() is None:  # on Slurm, submitit handles the job's signals
        stop_on_signals()
    sweep = OmegaConf.merge(OmegaConf.structured(SweepConfig), sweep_container)
    try:
        work(sweep, training, parent_run_id, tracking_uri, threads, deadline)
    except KeyboardInterrupt as stop:
        raise SystemExit(interrupted_exit_code(stop)) from None
