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
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, wait
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlp_experiments import WORKER_VARIABLE, cluster, tracking
from mlp_experiments.config.compose import compose_config, with_values
from mlp_experiments.config.registry import register_configs
from mlp_experiments.errors import (
    Terminated,
    interrupted_exit_code,
    stop_on_signals,
    stops_over_errors,
)
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
                 parent_run_id: ParentRun, deadline: float | None):
        self.sweep, self.training = sweep, training
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
            with stops_over_errors():  # an error a stop caused: the trial is interrupted
                return self.run(trial)
        except optuna.TrialPruned:
            log.info("trial %d %s after epoch %d", trial.number, trial.user_attrs["outcome"],
                     len(trial.user_attrs["history"]))
            raise
        except (KeyboardInterrupt, SystemExit) as stop:
            # Ctrl-C, or submitit's exit once it had Slurm requeue the job (a time limit, a
            # preemption). Queued again: the next worker resumes it from its checkpoint.
            trial.set_user_attr("outcome", "interrupted")
            trial.study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number})
            if isinstance(stop, SystemExit):  # Optuna records only a KeyboardInterrupt's trial
                trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception:
            trial.set_user_attr("outcome", "error")
            raise

    def run(self, trial) -> float:
        """The trial's values (its variant, its sampled parameters), then its training."""
        params = {"variant": trial.suggest_categorical("variant", list(self.sweep.variants))} \
            if self.sweep.variants else {}
        params |= {key: suggest(trial, key, d) for key, d in self.distributions.items()}
        composed, values = trial_overrides(self.sweep, self.training, params)
        trial.set_user_attr("overrides", [redact(o) for o in (*composed, *values)])
        log.info("trial %d/%d  %s", trial.number, self.n_trials, describe(params))
        value = self.train(trial, self.config(composed, values), params)
        log.info("trial %d %s: %s %.4f", trial.number, trial.user_attrs["outcome"],
                 self.sweep.metric, value)
        return value

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
        from mlp_experiments.train import NewRun, config_identity, train

        run_hash = config_identity(cfg)
        trial.set_user_attr("config_hash", run_hash)
        earlier = self.finished_with_hash(trial.study, run_hash)
        if earlier is not None:
            trial.set_user_attr("reused_from", earlier.number)
            trial.set_user_attr("history", earlier.user_attrs.get("history", []))
            trial.set_user_attr("outcome", earlier.user_attrs["outcome"])
            return earlier.value
        cfg.trainer.resume = resumed_trial(trial) is not None
        run = NewRun(tracking.new_journal_id(), self.run_name(trial, params),
                     self.parent_of(params))
        if cfg.tracking.enabled:  # where a lost worker's trial is found (study.LostTrial)
            folder = tracking.run_folder(cfg.trainer.checkpoint_dir, run_hash, run.journal_id)
            trial.set_user_attr("journal", str(folder))

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[self.sweep.metric], epoch)
            if trial.should_prune():
                raise engine.StopTraining("pruned")
            if past(self.deadline):
                raise engine.StopTraining("timeout")

        cpu_started = time.process_time()
        result = train(cfg, hooks=(report,), run_hash=run_hash,
                       overrides=trial.user_attrs["overrides"], run=run)
        trial.set_user_attr("cpu_s", time.process_time() - cpu_started)
        if result.journal and result.journal != trial.user_attrs["journal"]:
            trial.set_user_attr("journal", result.journal)  # the run had ended before: its
        if result.run_id:  # else the sweep links it once its records reach MLflow
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
    trainer = TrialTrainer(sweep, training, distributions, parent_run_id, deadline)
    n_trials = budget(sweep, distributions)
    try:
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
    finally:  # the trials' records (and a lost worker's) reach MLflow while later ones train
        if tracking_uri:
            tracking.Sender.wait()


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


class LocalWorkers:
    """A sweep's workers on this machine. With sweep.n_workers > 1 they are processes, spawned
    at the command's first stage and kept for its later ones (a staged comparison's tuning
    studies and race rounds): a worker's start costs seconds (torch, Optuna, its sender loading
    MLflow). Each stage goes to every worker, which works on it and waits for the next; one that
    died is replaced at the next stage. Use it as a context: its end lets the workers go."""

    def __init__(self, training: list[str], tracking_uri: str | None, deadline: float | None):
        self.training, self.tracking_uri, self.deadline = training, tracking_uri, deadline
        self.processes: dict[int, tuple[multiprocessing.Process, Connection]] = {}

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *_) -> None:
        for process, connection in self.processes.values():
            with suppress(OSError):  # it died after its last stage
                connection.send(None)
            process.join()

    def run(self, sweep: DictConfig, parent_run_id: ParentRun) -> int:
        """Work on `sweep`'s study until it has its n_trials; return how many workers died (a
        killed worker's trial is retried by the others, so the study can still be complete)."""
        import torch

        # Oversubscribed OpenMP threads spin against each other: give each worker its share of
        # the threads torch would use (os.cpu_count(), or OMP_NUM_THREADS when set).
        threads = max(1, torch.get_num_threads() // sweep.n_workers)
        if sweep.n_workers == 1:
            work(sweep, self.training, parent_run_id, self.tracking_uri, threads, self.deadline)
            return 0
        stage = (OmegaConf.to_container(sweep), parent_run_id)
        for index in range(sweep.n_workers):
            self.send(index, stage, threads)
        busy, lost = dict(self.processes), []
        try:
            while busy:
                ready = wait([handle for process, connection in busy.values()
                              for handle in (connection, process.sentinel)])
                for index, (process, connection) in list(busy.items()):
                    if connection in ready or process.sentinel in ready:
                        del busy[index]
                        if not finished(connection):
                            process.join()
                            lost.append(process.exitcode)
                            del self.processes[index]
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM reached us alone, not the workers
            for process, _ in self.processes.values():
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM if isinstance(stop, Terminated)
                            else signal.SIGINT)
            for process, _ in self.processes.values():
                process.join()
            self.processes.clear()
            raise
        if lost:
            log.warning("%d worker(s) exited with codes %s", len(lost), lost)
        return len(lost)

    def send(self, index: int, stage: tuple, threads: int) -> None:
        """The stage to worker `index`, started first if it is not (or no longer) running."""
        if index in self.processes:
            try:
                return self.processes[index][1].send(stage)
            except OSError:  # it died after its last stage
                self.processes.pop(index)[0].join()
        ours, theirs = multiprocessing.Pipe()
        process = multiprocessing.get_context("spawn").Process(
            target=serve_stages,
            args=(theirs, self.training, self.tracking_uri, threads, self.deadline, index))
        # Its Ctrl-C is held while it loads (__init__.py), if it will take it over itself.
        os.environ[WORKER_VARIABLE] = "1" if handles_its_signals() else ""
        try:
            process.start()
        finally:
            del os.environ[WORKER_VARIABLE]
        theirs.close()
        self.processes[index] = (process, ours)
        ours.send(stage)


def finished(connection: Connection) -> bool:
    """Did the worker say it finished its stage (rather than die, which closes its end)?"""
    try:
        return connection.recv() == "finished"
    except (EOFError, OSError):
        return False


@contextmanager
def worker_process(index: int) -> Iterator[None]:
    """A worker in a process of its own (a spawned process, a Slurm array task): its log lines
    say which worker wrote them; a stop ends it with the signal's exit code."""
    try:
        register_configs()
        logging.basicConfig(level=logging.INFO, format=f"[worker {index}] %(message)s")
        if handles_its_signals():
            stop_on_signals()
        with stops_over_errors():
            yield
    except KeyboardInterrupt as stop:
        raise SystemExit(interrupted_exit_code(stop)) from None


def handles_its_signals() -> bool:
    """Does a worker stop on Ctrl-C and SIGTERM itself? Not on Slurm: submitit handles the
    job's signals there."""
    return cluster.slurm_job_id() is None


def worker_sweep(sweep_container: dict) -> DictConfig:
    """The sweep as a worker gets it: plain data."""
    return OmegaConf.merge(OmegaConf.structured(SweepConfig), sweep_container)


def serve_stages(connection: Connection, training: list[str], tracking_uri: str | None,
                 threads: int, deadline: float | None, index: int) -> None:
    """A local worker process (LocalWorkers): works on each stage it is sent, until it is sent
    None or the command is gone (killed: its end of the pipe closed)."""
    with worker_process(index), suppress(EOFError):
        while (stage := connection.recv()) is not None:
            sweep_container, parent_run_id = stage
            work(worker_sweep(sweep_container), training, parent_run_id, tracking_uri, threads,
                 deadline)
            connection.send("finished")


def run_worker(sweep_container: dict, training: list[str], parent_run_id: ParentRun,
               tracking_uri: str | None, threads: int, deadline: float | None,
               index: int) -> None:
    """A Slurm array task's worker."""
    with worker_process(index):
        work(worker_sweep(sweep_container), training, parent_run_id, tracking_uri, threads,
             deadline)
