"""Faults done for real: processes killed, interrupted and raced, a tracking server stopped and
restarted mid-run. Each test then reads the MLflow and Optuna records back: every epoch is
there, every run has its true status, nothing is left RUNNING."""

import ast
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import default_sigint, free_port, worker_of
from mlflow import MlflowClient
from optuna.trial import TrialState

from mlp_experiments.sender import JOURNAL_TAG
from mlp_experiments.stores import experiment_id, sqlite_lock
from mlp_experiments.sweep.study import mlflow_run_of

# An epoch that lasts long enough (a few tenths of a second) to be hit in the middle.
SLOW = ["data=synthetic", "data.train_size=10000", "model.hidden_sizes=[256,256]",
        "trainer.device=cpu", "tracking.log_model=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
pytestmark = pytest.mark.faults


def train_command(folder: Path, uri: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mlp_experiments.train", *SLOW, "optimizer.lr=0.05",
            f"tracking.uri={uri}",
            f"trainer.checkpoint_dir={folder / 'checkpoints'}", *overrides]


STARTED: list[subprocess.Popen] = []  # by this test, for its end


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """A failed test's commands (stopped ones too) are killed, with their process groups."""
    yield
    for process in STARTED:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    STARTED.clear()


def start(command: list[str], folder: Path, log: str, env=ENV) -> subprocess.Popen:
    # its own process group, which a test may signal whole, as a terminal's Ctrl-C does, and
    # the Ctrl-C a terminal gives it (conftest.default_sigint)
    with open(folder / log, "w") as output:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=default_sigint)
    process.log, process.folder = folder / log, folder
    STARTED.append(process)
    return process


def finish(process: subprocess.Popen, folder: Path, log: str) -> tuple[int, str]:
    code = process.wait(timeout=300)
    return code, (folder / log).read_text()


def runs(uri: str, experiment: str = "mlp-experiments", journal: str | None = None) -> list:
    """The experiment's runs; only the one shipped from `journal` (a folder's name) if given."""
    with sqlite_lock(uri):  # a new client creates the store's tables, which a run may be doing
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
    where = f"tags.`{JOURNAL_TAG}` = '{journal}'" if journal else ""
    return client.search_runs([found.experiment_id], where) if found else []


def steps(uri: str, run_id: str, metric: str = "val_acc") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


def wait_for(condition, process: subprocess.Popen | None = None, timeout: float = 240,
             every: float = 0.2):
    """`condition()`'s first true value; fails at once if `process` ends before it comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before the "
                                 f"fault's moment:\n{process.log.read_text()}")
        time.sleep(every)
    raise AssertionError("timed out waiting for the fault's moment")


def logged_epochs(uri: str, count: int, process: subprocess.Popen):
    """Once the run's journal holds `count` epochs (where training is: its sender may be
    behind), the run as MLflow has it when the test needs it (`.get()`)."""
    wait_for(lambda: journal_epochs(process.folder) >= count, process)
    return TheRun(uri, journal_of(process.folder).parent.name)


class TheRun:
    """The run shipped from a journal, looked up when first asked (its sender may still make
    it)."""

    def __init__(self, uri: str, journal: str):
        self.uri, self.journal, self.found = uri, journal, None

    @property
    def info(self):
        self.found = self.found or wait_for(
            lambda: next(iter(runs(self.uri, journal=self.journal)), None))
        return self.found.info


def resume_records_every_epoch(command: list[str], folder: Path, uri: str, run_id: str) -> None:
    """The same command with trainer.resume=true continues the run to FINISHED, each of its 6
    epochs once."""
    code, log = finish(start([*command, "trainer.resume=true"], folder, "resume.log"),
                       folder, "resume.log")
    assert code == 0, log
    assert steps(uri, run_id) == [1, 2, 3, 4, 5, 6]  # each epoch once
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def children_running(pid: int, recursive: bool = False) -> dict:
    """The live child processes of `pid`, each with its command line: a child that just ended
    (a git call, say) is a zombie until it is reaped, and has none."""
    import psutil

    running = {}
    for child in psutil.Process(pid).children(recursive=recursive):
        try:
            running[child] = " ".join(child.cmdline())
        except psutil.NoSuchProcess:  # ZombieProcess too
            continue
    return running


def sender_of(process: subprocess.Popen):
    (sender,) = [child for child, command in children_running(process.pid).items()
                 if "mlp_experiments.sender" in command]
    return sender


def journal_of(folder: Path) -> Path | None:
    """The journal of the run under `folder`, once there is one."""
    from mlp_experiments import tracking

    return next((folder / "checkpoints").rglob(tracking.JOURNAL), None)


def journal_epochs(folder: Path) -> int:
    """How many epochs the run's journal under `folder` holds (0 before there is one)."""
    from mlp_experiments import tracking

    journal = journal_of(folder)
    if journal is None:
        return 0
    records, _, _ = tracking.read_journal(journal)
    return sum(record["kind"] == "epoch" for record in records)


def sync(folder: Path) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "mlp_experiments.sync",
                           str(folder / "checkpoints")], capture_output=True, text=True, env=ENV,
                          timeout=300)
    return done.returncode, done.stdout + done.stderr


def metric_rows(uri: str, run_id: str) -> dict[str, list[int]]:
    """The steps of every metric row the store holds for the run, per metric."""
    client = MlflowClient(uri)
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


def test_sigkill_mid_run_closes_the_run_lost_then_resume_records_every_epoch_in_it(tmp_path):
    """The training process killed (its sender lives on): the sender sends what was journaled
    and closes the run FAILED, outcome lost; the resume continues the same run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = train_command(tmp_path, uri, "trainer.epochs=6")
    process = start(command, tmp_path, "first.log")
    run = logged_epochs(uri, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_id = run.info.run_id  # once its sender made it (and the store's tables)
    ended = wait_for(lambda: (found := MlflowClient(uri).get_run(run_id))
                     .info.status != "RUNNING" and found)
    assert ended.info.status == "FAILED" and ended.data.tags["outcome"] == "lost"

    resume_records_every_epoch(command, tmp_path, uri, run.info.run_id)
    (again,) = runs(uri)
    assert again.info.run_id == run.info.run_id  # the same run, continued
    assert int(again.data.tags["resumed_after_epoch"]) >= 2


def test_the_job_signals_reaching_the_sender_leave_the_run_to_the_trainer(tmp_path):
    """Slurm signals every process of a job (SIGUSR2 before its time limit, SIGTERM on a
    requeue) and Ctrl-C reaches the whole terminal group: the sender lives on through them,
    so the training process alone decides how the run ends, with every epoch."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start(train_command(tmp_path, uri, "trainer.epochs=6"), tmp_path, "train.log")
    run = logged_epochs(uri, 2, process)
    sender = sender_of(process)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        sender.send_signal(signum)
    code, log = finish(process, tmp_path, "train.log")
    assert code == 0, log
    assert MlflowClient(uri).get_run(run.info.run_id).info.status == "FINISHED"
    assert steps(uri, run.info.run_id) == [1, 2, 3, 4, 5, 6]


def test_a_sigkilled_sender_leaves_training_going_and_mlp_sync_sends_the_rest_once(tmp_path):
    """The sender killed mid-stream (the OOM killer, a stray kill -9): training goes on to its
    end, the command names what is unsent and mlp-sync; mlp-sync then sends it, no record
    twice: one metric row per epoch and metric."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start(train_command(tmp_path, uri, "trainer.epochs=6"), tmp_path, "train.log")
    run = logged_epochs(uri, 2, process)
    sender_of(process).send_signal(signal.SIGKILL)
    code, log = finish(process, tmp_path, "train.log")
    assert code == 0 and "Traceback" not in log, log
    assert "not in MLflow yet" in log and "mlp-sync" in log
    assert journal_epochs(tmp_path) == 6  # training went on to its end

    code, log = sync(tmp_path)
    assert code == 0 and "sent 1 of 1 journal(s)" in log, log
    finished = MlflowClient(uri).get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags["outcome"] == "completed"
    assert all(steps == [1, 2, 3, 4, 5, 6] for steps in metric_rows(uri, run.info.run_id).values())
    assert sync(tmp_path)[1].startswith("0 journal(s)")  # nothing left: a second sync sends nothing


# Forks from one process that loaded MLflow, so each creation costs its work alone: a full one is
# timed, then others are killed at shares of that time, where MLflow adds tables and columns.
KILLED_AT = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
KILLED_WHILE_CREATING = f"""
import os, signal, sys, time
import mlflow.store.tracking.sqlalchemy_store
from mlp_experiments import stores
folder = sys.argv[1]
def create(name):
    pid = os.fork()
    if pid == 0:
        stores.experiment_id(f"sqlite:///{{folder}}/{{name}}.db", "mlp-experiments")
        os._exit(0)
    return pid
start = time.monotonic()
os.waitpid(create("whole"), 0)
took = time.monotonic() - start
for share in {KILLED_AT}:
    pid = create(f"killed-{{share}}")
    time.sleep(share * took)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


def test_a_process_killed_while_it_creates_a_new_store_leaves_none_or_a_whole_one(tmp_path):
    """MLflow creates a new SQLite store's tables in many transactions; a sender killed among
    them (the OOM killer on a busy machine) must not leave a store no later command can open
    (MLflow's "duplicate column name")."""
    subprocess.run([sys.executable, "-c", KILLED_WHILE_CREATING, str(tmp_path)], check=True,
                   env=ENV, timeout=300)
    for share in KILLED_AT:
        uri = f"sqlite:///{tmp_path / f'killed-{share}.db'}"
        experiment = experiment_id(uri, "mlp-experiments")  # as the next command opens it
        MlflowClient(uri).create_run(experiment)
        assert [e.name for e in MlflowClient(uri).search_experiments()] == [
            "mlp-experiments", "Default"]
    left = [path.name for path in tmp_path.iterdir()]
    assert all(name.endswith((".db", ".db.lock")) for name in left), left  # nothing half-made


def test_a_store_file_another_process_opened_first_is_used_in_place(tmp_path):
    """A sqlite3 shell (or a test's locker) that opened the path first made an empty file: the
    tables go into that file, never a new one renamed over it under its open connection."""
    database = tmp_path / "mlflow.db"
    other = sqlite3.connect(database)
    inode = database.stat().st_ino
    experiment_id(f"sqlite:///{database}", "mlp-experiments")
    assert database.stat().st_ino == inode
    assert ("mlp-experiments",) in other.execute("SELECT name FROM experiments").fetchall()
    other.close()


def test_resuming_a_finished_run_does_nothing_and_says_so(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = train_command(tmp_path, uri, "trainer.epochs=2", "data.train_size=2000")
    code, log = finish(start(command, tmp_path, "first.log"), tmp_path, "first.log")
    assert code == 0, log
    code, log = finish(start([*command, "trainer.resume=true"], tmp_path, "again.log"),
                       tmp_path, "again.log")
    assert code == 0 and "already ended (completed after 2 epochs" in log
    (run,) = runs(uri)  # no second run, no extra epoch
    assert steps(uri, run.info.run_id) == [1, 2] and run.info.status == "FINISHED"


class MlflowServer:
    """`mlflow server` on loopback with a SQLite backend in `folder`; `.stop()` and `.start()`
    it again on the same port and store."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri, self.process = f"http://127.0.0.1:{self.port}", None

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.healthy, timeout=120, every=0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                return True
        except OSError:
            return False

    def stop(self):
        if self.process.returncode is None:  # not stopped by the test already
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        wait_for(lambda: not self.healthy(), timeout=30)


@pytest.fixture(scope="module")
def shared_mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(shared_mlflow_server):
    """The module's server, up (a test stops and starts it; one that failed may have left it
    down). Its tests share its store: each finds its own runs by journal or study."""
    if shared_mlflow_server.process.poll() is not None:
        shared_mlflow_server.start()
    return shared_mlflow_server


def test_a_tracking_server_outage_never_pauses_training_and_every_epoch_arrives_once(
        tmp_path, mlflow_server):
    """The server killed for the middle 60% of a 10-epoch run (from epoch 2 to epoch 8) and
    started again: training never waits for it (epochs 3 to 8 are journaled while it is down),
    and once it is back every epoch is in MLflow exactly once and the run is FINISHED."""
    uri = mlflow_server.uri
    process = start(train_command(tmp_path, uri, "trainer.epochs=10"), tmp_path, "outage.log")
    run = logged_epochs(uri, 2, process)
    mlflow_server.stop()
    wait_for(lambda: journal_epochs(tmp_path) >= 8, process)
    mlflow_server.start()
    code, log = finish(process, tmp_path, "outage.log")
    assert code == 0 and "Traceback" not in log, log
    # No pause: a store that blocked training would show as a gap of its retry budget (the
    # previous design: ~30 s, then the run stopped) between two epochs' journal times.
    from mlp_experiments import tracking

    (journal,) = (tmp_path / "checkpoints").rglob(tracking.JOURNAL)
    times = [r["time"] for r in tracking.read_journal(journal)[0] if r["kind"] == "epoch"]
    assert max(b - a for a, b in itertools.pairwise(times)) < 15, times
    assert "MLflow is not taking the records" in log  # the outage was seen, and said
    if "uv run mlp-sync" in log:  # a busy machine: the server was back too late for the drain
        assert sync(tmp_path)[0] == 0
    finished = MlflowClient(uri).get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    assert all(steps == list(range(1, 11))
               for steps in metric_rows(uri, run.info.run_id).values())


def test_a_command_ending_in_an_outage_stops_its_sender_and_mlp_sync_sends_the_rest_once(
        tmp_path, mlflow_server):
    """The server killed at the run's second epoch and down past its end: the command waits its
    stated time, names what is unsent and mlp-sync, and its sender ends with it (left trying,
    it held the command's output open as long again). Once the server is back, mlp-sync sends
    every epoch once and the run ends FINISHED."""
    import psutil

    uri = mlflow_server.uri
    process = start(train_command(tmp_path, uri, "trainer.epochs=6"), tmp_path, "train.log")
    run_id = logged_epochs(uri, 2, process).info.run_id
    sender = sender_of(process)
    mlflow_server.stop()
    code, log = finish(process, tmp_path, "train.log")
    assert code == 0 and "not in MLflow yet" in log and "mlp-sync" in log, log
    assert not sender.is_running() or sender.status() == psutil.STATUS_ZOMBIE

    mlflow_server.start()
    code, synced = sync(tmp_path)
    assert code == 0 and "sent 1 of 1 journal(s)" in synced, synced
    finished = MlflowClient(uri).get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags["outcome"] == "completed"
    assert all(steps == list(range(1, 7)) for steps in metric_rows(uri, run_id).values())


def test_a_run_killed_during_an_outage_resumes_with_every_epoch_once(tmp_path, mlflow_server):
    """The training process SIGKILLed while the server is down, resumed once it is back:
    every epoch once (no duplicate metric rows), the run FINISHED."""
    uri = mlflow_server.uri
    command = train_command(tmp_path, uri, "trainer.epochs=6")
    process = start(command, tmp_path, "first.log")
    run = logged_epochs(uri, 2, process)
    run_id = run.info.run_id  # in MLflow before the outage: the resume must continue it
    mlflow_server.stop()
    wait_for(lambda: journal_epochs(tmp_path) >= 4, process)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its sender
    process.wait()
    mlflow_server.start()
    resume_records_every_epoch(command, tmp_path, uri, run_id)
    assert all(steps == list(range(1, 7)) for steps in metric_rows(uri, run_id).values())


def test_a_sweep_completes_its_trials_through_an_outage_and_every_run_arrives(
        tmp_path, mlflow_server, postgres):
    """Two workers, six trials, Optuna on PostgreSQL, the MLflow server down from the first
    finished epoch until three trials ended: the study goes on (its bookkeeping is not
    MLflow's), and once the server is back every child run is whole and true."""
    import psycopg

    admin = postgres.replace("+psycopg", "")
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as db:
        db.execute("CREATE DATABASE outage")
    storage, name = f"{postgres}/outage", "outage"
    command = [*sweep_command(tmp_path, mlflow_server.uri, name, "sweep.n_workers=2",
                              "sweep.n_trials=6", "trainer.epochs=3", "data.train_size=4000"),
               f"sweep.storage={storage}"]
    sweep = start(command, tmp_path, "sweep.log")
    wait_for(lambda: journal_epochs(tmp_path) >= 1, sweep)
    mlflow_server.stop()

    def ended_trials() -> int:
        study = optuna.load_study(study_name=name, storage=storage)
        return len(study.get_trials(states=(TrialState.COMPLETE,)))
    wait_for(lambda: ended_trials() >= 3, sweep)
    mlflow_server.start()
    code, log = finish(sweep, tmp_path, "sweep.log")
    assert code == 0 and "Traceback" not in log, log
    code, synced = sync(tmp_path)  # what the workers could not send before they ended, if any
    assert code == 0, synced
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6
    children = child_runs(mlflow_server.uri, name)
    assert len(children) == 6 and all(run.info.status == "FINISHED" for run in children)
    for run in children:
        assert all(steps == [1, 2, 3] for steps in metric_rows(mlflow_server.uri,
                                                                run.info.run_id).values())


def test_two_identical_runs_at_once_one_trains_the_other_refuses(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a fresh store: both race to create it
    command = train_command(tmp_path, uri, "trainer.epochs=4", "data.train_size=5000")
    first, second = (start(command, tmp_path, f"{name}.log") for name in ("a", "b"))
    results = [finish(first, tmp_path, "a.log"), finish(second, tmp_path, "b.log")]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refused = next(log for code, log in results if code)
    assert "Another process" in refused and "is training this exact configuration" in refused
    assert "Traceback" not in refused
    finished = [r for r in runs(uri) if r.info.status == "FINISHED"]
    assert len(finished) == 1 and steps(uri, finished[0].info.run_id) == [1, 2, 3, 4]
    assert not list((tmp_path / "checkpoints").rglob("*.tmp"))


def test_two_fresh_processes_create_one_sqlite_store_at_the_same_moment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    processes = [start(train_command(tmp_path, uri, "trainer.epochs=1", "data.train_size=2000",
                                     f"trainer.seed={seed}"), tmp_path, f"{seed}.log")
                 for seed in (0, 1)]
    results = [finish(process, tmp_path, f"{seed}.log") for seed, process in enumerate(processes)]
    assert [code for code, _ in results] == [0, 0], results
    finished = runs(uri)
    assert sorted(r.info.status for r in finished) == ["FINISHED", "FINISHED"]
    assert len({r.info.run_name for r in finished}) == 2  # seed 0 and 1 get their own names


def test_a_crash_after_training_leaves_the_run_failed_not_finished(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = train_command(tmp_path, uri, "trainer.epochs=8", "tracking.log_model=false")
    process = start(command, tmp_path, "crash.log")
    wait_for(lambda: journal_epochs(tmp_path) >= 1, process)
    # The weights go to the run's artifacts/model_state/: a file in that place makes writing
    # them fail for real once training is over.
    (artifacts,) = (tmp_path / "checkpoints").rglob("artifacts")
    (artifacts / "model_state").write_text("in the way")
    code, log = finish(process, tmp_path, "crash.log")
    assert code != 0
    (run,) = runs(uri)
    assert run.info.status == "FAILED" and run.data.tags["outcome"] == "crashed"
    assert steps(uri, run.info.run_id) == list(range(1, 9))  # what it recorded stays


# ---------------------------------------------------------------------------- sweeps


def sweep_command(tmp_path: Path, uri: str, name: str, *extra: str) -> list[str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
study_name: {name}
overrides: [trainer.epochs=5]
space:
  optimizer.lr: tag(log, interval(0.01, 0.1))
sampler: random
pruner: none
n_trials: 3
""")
    return [sys.executable, "-m", "mlp_experiments.sweep", f"sweep={path}", *SLOW,
            f"tracking.uri={uri}", f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}",
            f"sweep.storage=sqlite:///{tmp_path / 'optuna.db'}", *extra]


def running_trial(tmp_path: Path, name: str, epochs: int, process: subprocess.Popen,
                  besides: set[int] = frozenset()):
    """A trial RUNNING with `epochs` epochs reported (not one numbered in `besides`), once
    there is one."""
    def ready():
        try:
            storage = f"sqlite:///{tmp_path / 'optuna.db'}"
            with sqlite_lock(storage):
                study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return None
        return next((t for t in study.get_trials(states=(TrialState.RUNNING,))
                     if len(t.intermediate_values) >= epochs and t.number not in besides), None)
    return wait_for(ready, process)


def frozen_mid_trial(tmp_path: Path, name: str, sweep: subprocess.Popen, epochs: int):
    """A trial RUNNING with 2 epochs reported, its sweep's processes frozen (SIGSTOP to the
    group: SIGCONT thaws them) before the last of its `epochs` is logged. Polling the study
    took a busy machine longer than a trial's other 6 epochs (the trial then ended before the
    test's signal): a trial that got that far is let go and the next one taken. The check reads
    the log, not the study: a frozen process may hold SQLite's lock on it."""
    passed = set()
    while True:
        victim = running_trial(tmp_path, name, 2, sweep, besides=passed)
        os.killpg(sweep.pid, signal.SIGSTOP)
        if epochs_logged(sweep.log.read_text(), victim.number) < epochs:
            return victim
        os.killpg(sweep.pid, signal.SIGCONT)
        passed.add(victim.number)


def epochs_logged(log: str, number: int) -> int:
    """The epochs a sweep's log shows of trial `number`: its worker's epoch lines after the
    trial's header (`[worker 1] trial 3/6  ...`), up to that worker's next trial."""
    lines = log.splitlines()
    header = next(i for i, line in enumerate(lines)
                  if re.match(rf"(\[worker \d+\] )?trial {number}/", line))
    worker = re.escape(re.match(r"(\[worker \d+\] )?", lines[header]).group(0))
    count = 0
    for line in lines[header + 1:]:
        if re.match(rf"{worker}trial \d+/", line):
            break
        count += bool(re.match(rf"{worker}epoch \d+/", line))
    return count


def child_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mlp-experiments")
    (parent,) = client.search_runs([experiment.experiment_id],
                                   f"tags.`optuna.study_name` = '{name}'")
    return client.search_runs([experiment.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def test_a_killed_sweep_worker_is_closed_retried_from_its_checkpoint_and_summarised(tmp_path):
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "lost_worker"
    # 8 epochs, killed after 2: the victim is far from its end (a worker killed after its run
    # ended is test_sweep's retried-trial case).
    command = sweep_command(tmp_path, uri, name, "sweep.n_workers=2", "trainer.epochs=8")
    sweep = start(command, tmp_path, "sweep.log")
    victim = frozen_mid_trial(tmp_path, name, sweep, 8)
    os.kill(worker_of(victim).pid, signal.SIGKILL)
    os.killpg(sweep.pid, signal.SIGCONT)
    code, log = finish(sweep, tmp_path, "sweep.log")
    assert code == 0, log  # the budget was met: the command summarises and succeeds

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3  # exactly n_trials, the lost one among them
    (retry,) = [t for t in complete if t.user_attrs.get("resumes") == victim.number]
    assert retry.params == victim.params
    client = MlflowClient(uri)
    lost = client.get_run(mlflow_run_of(victim))
    assert lost.info.status == "FAILED" and lost.data.tags["outcome"] == "lost"
    retried = client.get_run(mlflow_run_of(retry))
    assert int(retried.data.tags["resumed_after_epoch"]) >= 2  # not from epoch 1
    assert steps(uri, retried.info.run_id) == list(range(1, 9))  # and its record is whole
    assert all(run.info.status != "RUNNING" for run in child_runs(uri, name))
    assert "report" in {a.path for a in client.list_artifacts(study.user_attrs[
        "mlflow_parent_run_id"])}


def test_sigint_to_a_sweep_records_the_interruption_and_the_next_command_resumes(tmp_path):
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "interrupted"
    command = sweep_command(tmp_path, uri, name, "trainer.epochs=8")
    sweep = start(command, tmp_path, "first.log")
    victim = frozen_mid_trial(tmp_path, name, sweep, 8)
    sweep.send_signal(signal.SIGINT)  # handled once it thaws, mid-trial
    os.killpg(sweep.pid, signal.SIGCONT)
    code, log = finish(sweep, tmp_path, "first.log")
    assert code == 130 and "run the same command again to resume" in log

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    trial = optuna.load_study(study_name=name, storage=storage).trials[victim.number]
    assert trial.state == TrialState.FAIL and trial.user_attrs["outcome"] == "interrupted"
    killed = MlflowClient(uri).get_run(mlflow_run_of(trial))
    assert killed.info.status == "KILLED" and killed.data.tags["outcome"] == "interrupted"

    code, log = finish(start(command, tmp_path, "again.log"), tmp_path, "again.log")
    assert code == 0, log
    study = optuna.load_study(study_name=name, storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    (resumed,) = [t for t in complete if t.user_attrs.get("resumes") == victim.number]
    run = MlflowClient(uri).get_run(mlflow_run_of(resumed))
    assert int(run.data.tags["resumed_after_epoch"]) >= 2
    assert steps(uri, run.info.run_id) == list(range(1, 9))
    assert all(run.info.status != "RUNNING" for run in child_runs(uri, name))


def test_sweep_timeout_stops_the_running_trial_at_its_next_epoch(tmp_path):
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "timed"
    command = sweep_command(tmp_path, uri, name, "trainer.epochs=500", "sweep.timeout=30")
    code, log = finish(start(command, tmp_path, "sweep.log"), tmp_path, "sweep.log")
    assert code == 0, log
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    (trial,) = study.trials  # 500 epochs do not fit in 30 s: the first trial is cut
    assert trial.state == TrialState.PRUNED and trial.user_attrs["outcome"] == "timeout"
    assert 1 <= len(trial.user_attrs["history"]) < 500
    run = MlflowClient(uri).get_run(mlflow_run_of(trial))
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "timeout"


def read_only(folder: Path, command: list[str]) -> list[str]:
    """`command` in a private mount namespace where `folder` is a read-only filesystem."""
    script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, str(folder), *command]


def test_a_read_only_tracking_store_fails_at_once_with_the_fix(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    probe = subprocess.run(read_only(store, ["touch", str(store / "probe")]),
                           capture_output=True, text=True)
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"no private read-only mount here: {probe.stderr.strip()}")
    command = read_only(store, train_command(tmp_path, uri, "trainer.epochs=1"))
    code, log = finish(start(command, tmp_path, "ro.log"), tmp_path, "ro.log")
    assert code != 0 and "Traceback" not in log
    assert "is read-only here" in log and "tracking=none" in log
    assert not list(tmp_path.rglob("last.pt"))  # it stopped before any training


def test_a_full_disk_stops_the_run_failed_with_one_message_and_keeps_what_it_recorded(tmp_path):
    """The checkpoint folder on a 1.7 MB filesystem: the first checkpoint (1.1 MB) fits, the
    second cannot be written beside it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    small_disk = 'mount -t tmpfs -o size=1700k tmpfs "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", small_disk, str(checkpoints), "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private tmpfs mount here: {probe.stderr.strip()}")
    command = ["unshare", "-m", "sh", "-c", small_disk, str(checkpoints),
               *train_command(tmp_path, uri, "trainer.epochs=4")]
    code, log = finish(start(command, tmp_path, "full.log"), tmp_path, "full.log")
    assert code == 1 and "Traceback" not in log, log
    assert "error: Cannot write the checkpoint" in log and "No space left on device" in log
    assert "trainer.resume=true" in log
    (run,) = runs(uri)
    assert run.info.status == "FAILED" and run.data.tags["outcome"] == "crashed"
    assert steps(uri, run.info.run_id) == [1]  # the epoch whose checkpoint was written


def test_a_sweep_whose_every_trial_failed_exits_non_zero_after_its_summary(tmp_path):
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "all_diverge"
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
study_name: {name}
overrides: [trainer.epochs=2, data.train_size=2000]
space:
  optimizer.lr: choice(1e12, 1e15)
sampler: grid
pruner: none
""")
    command = [sys.executable, "-m", "mlp_experiments.sweep", f"sweep={path}", *SLOW,
               f"tracking.uri={uri}", f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}",
               f"sweep.storage=sqlite:///{tmp_path / 'optuna.db'}"]
    code, log = finish(start(command, tmp_path, "sweep.log"), tmp_path, "sweep.log")
    assert code != 0 and "Every trial of study all_diverge failed (2)" in log
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.user_attrs["outcome"] for t in study.trials] == ["diverged", "diverged"]
    assert "report" in {a.path for a in MlflowClient(uri).list_artifacts(
        study.user_attrs["mlflow_parent_run_id"])}  # summarised all the same


def test_sigterm_mid_run_ends_it_as_ctrl_c_does_and_resume_completes_it(tmp_path):
    """kill, docker stop, Kubernetes and systemd send SIGTERM: the run is closed KILLED with
    its checkpoint kept and the resume hint, exit code 143, no traceback."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = train_command(tmp_path, uri, "trainer.epochs=6")
    process = start(command, tmp_path, "first.log")
    run = logged_epochs(uri, 2, process)
    process.send_signal(signal.SIGTERM)
    code, log = finish(process, tmp_path, "first.log")
    assert code == 143 and "Traceback" not in log, log
    assert "interrupted: resume with trainer.resume=true" in log
    ended = MlflowClient(uri).get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags["outcome"] == "interrupted"
    resume_records_every_epoch(command, tmp_path, uri, run.info.run_id)


def test_sigterm_to_a_sweep_of_two_workers_stops_both_and_leaves_no_run_running(tmp_path):
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "terminated"
    command = sweep_command(tmp_path, uri, name, "sweep.n_workers=2", "trainer.epochs=8")
    sweep = start(command, tmp_path, "first.log")
    running_trial(tmp_path, name, 2, sweep)
    sweep.send_signal(signal.SIGTERM)
    code, log = finish(sweep, tmp_path, "first.log")
    assert code == 143 and "Traceback" not in log, log
    assert "run the same command again to resume" in log
    assert all(run.info.status != "RUNNING" for run in child_runs(uri, name))

    code, log = finish(start(command, tmp_path, "again.log"), tmp_path, "again.log")
    assert code == 0, log
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert all(run.info.status != "RUNNING" for run in child_runs(uri, name))


def test_ctrl_c_while_another_process_locks_the_store_ends_the_run_killed_not_finished(tmp_path):
    """The store locked when Ctrl-C comes, past MLflow's 20 s busy timeout: the sender's first
    write of the status fails, its retry once the lock is gone succeeds, and the command ends
    once the status is in the store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start(train_command(tmp_path, uri, "trainer.epochs=8", "tracking.log_model=true"),
                    tmp_path, "train.log")
    run = logged_epochs(uri, 2, process)
    with sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, timeout=60) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        process.send_signal(signal.SIGINT)
        time.sleep(22)  # past MLflow's busy timeout: the sender's first write fails
        locker.execute("COMMIT")
    code, log = finish(process, tmp_path, "train.log")
    assert code == 130 and "Traceback" not in log, log
    ended = MlflowClient(uri).get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags["outcome"] == "interrupted"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_inside_code_that_exec_runs_still_exits_with_the_signals_code(tmp_path, signum):
    """A stop that lands in code exec() runs from a string (dataclasses define their methods
    so; the random-moment test hit one as MLflow imported pydantic at a run's end) made
    CPython end a `python -m` command by SIGINT (exit -2) whatever code it exited with: the
    commands' interrupted exit (errors.exit_interrupted) keeps 128 + the signal's number."""
    script = tmp_path / "stopped.py"
    script.write_text(
        "import os, signal\n"
        "from mlp_experiments.errors import exit_interrupted, stop_on_signals\n"
        "stop_on_signals()\n"
        "try:\n"
        f"    exec('os.kill(os.getpid(), {int(signum)})\\nwhile True: pass')\n"
        "except KeyboardInterrupt as stop:\n"
        "    print('closed', flush=True)\n"
        "    exit_interrupted(stop)\n")
    done = subprocess.run([sys.executable, "-m", "stopped"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=ENV)  # as `python -m mlp_experiments.train`
    assert (done.returncode, done.stdout, done.stderr) == (128 + signum, "closed\n", "")


STOPPED_WHILE_SQLALCHEMY_READS = """
import ctypes, functools, os, signal, sqlite3, sys, time
import sqlalchemy
from mlp_experiments.errors import outside_libraries, stop_on_signals

database, signum, twice = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3] == "twice"

engine = sqlalchemy.create_engine(f"sqlite:///{database}")

@sqlalchemy.event.listens_for(engine, "connect")
def stop_in_a_query(connection, _record):
    # The signal from inside SQLite's step, by C alone: Python takes it as the query returns.
    kill = functools.partial(ctypes.CDLL(None).kill, os.getpid(), signum)
    connection.create_function("stop", 0, kill)

with engine.begin() as connection:
    connection.exec_driver_sql("CREATE TABLE rows (id INTEGER)")
    connection.exec_driver_sql("INSERT INTO rows VALUES " + ",".join(["(1)"] * 1000))
stop_on_signals()  # SIGTERM; SIGUSR2 as a Slurm worker has submitit handle it (SlurmWorker)
signal.signal(signal.SIGUSR2, outside_libraries(lambda _signum, _frame: sys.exit(-1)))
try:
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT stop(), id FROM rows").all()
    if twice:  # the second before the first is retried: it stops the command, once
        os.kill(os.getpid(), signum)
    time.sleep(10)
except (KeyboardInterrupt, SystemExit) as stop:  # kept while the command closes its records
    time.sleep(0.2)
    other = sqlite3.connect(database, timeout=1)
    try:
        other.execute("INSERT INTO rows VALUES (0)")
        other.commit()
        print(type(stop).__name__, "another writer wrote", flush=True)
    except sqlite3.OperationalError as error:
        print(type(stop).__name__, "another writer:", error, flush=True)
"""


@pytest.mark.parametrize("times", ["once", "twice"])
@pytest.mark.parametrize(("signal_name", "stop"), [("SIGTERM", "Terminated"),
                                                    ("SIGUSR2", "SystemExit")])
def test_a_stop_in_sqlalchemys_code_waits_until_sqlalchemy_returns(tmp_path, signal_name, stop,
                                                                   times):
    """A stop raised in SQLAlchemy's code as a SQLite query returned left the statement
    unfinished, holding the file's lock for as long as the stop lived: an interrupted sweep
    worker's own heartbeat and records of the stop, and its study's other workers, waited 60 s
    and failed (two-worker CI run). The stop is raised once SQLAlchemy returns, and the file
    takes another writer. A second signal before the first is retried stops it once."""
    done = subprocess.run([sys.executable, "-c", STOPPED_WHILE_SQLALCHEMY_READS,
                           str(tmp_path / "study.db"), signal_name, times], capture_output=True,
                          text=True, timeout=120, env=ENV)
    assert (done.stdout, done.stderr) == (f"{stop} another writer wrote\n", "")


STOPPED_WHILE_OMEGACONF_LOADS = """
import os, signal, sys, time, traceback
from collections import Counter
from omegaconf import OmegaConf
from mlp_experiments.errors import outside_libraries

def stop(_signum, _frame):
    raise KeyboardInterrupt

def signal_at(frame, event, _arg):  # SIGINT as OmegaConf's `call`-th function starts
    global calls
    if event == "call" and frame.f_globals.get("__name__", "").startswith("omegaconf"):
        calls += 1
        if calls == call:
            os.kill(os.getpid(), signal.SIGINT)

signal.signal(signal.SIGINT, outside_libraries(stop))  # the handler stop_on_signals installs
call, calls, outcomes = 0, 0, Counter()
sys.setprofile(signal_at)
OmegaConf.load(sys.argv[1])  # counts OmegaConf's calls in one load
total = calls
for call in range(1, total + 1, total // 40):
    calls = 0
    sys.setprofile(signal_at)
    try:
        try:
            OmegaConf.load(sys.argv[1])
        finally:
            sys.setprofile(None)
        time.sleep(5)
        outcomes["not stopped"] += 1
    except KeyboardInterrupt as stopped:
        cut = any("/omegaconf/" in frame.filename
                  for frame in traceback.extract_tb(stopped.__traceback__))
        outcomes["stopped in OmegaConf" if cut else "stopped after"] += 1
    except Exception as error:
        outcomes[type(error).__name__] += 1
print(dict(outcomes))
"""


def test_a_stop_in_omegaconfs_code_waits_until_omegaconf_returns():
    """A Ctrl-C that landed in OmegaConf while Hydra loaded `conf/train.yaml` left a node
    half-built; OmegaConf's cleanup then failed (AttributeError: 'NoneType' object has no
    attribute '_invalidate_flags_cache'), which Hydra reports as a config error: exit 1, not
    130 (CI, a Ctrl-C at 0.6 s of mlp-train's start). SIGINT at 40 or so points spread over
    every function OmegaConf calls in that load: each stop is raised once OmegaConf has
    returned (no OmegaConf frame in its traceback). Raised at once, as before, every one of 41
    points failed: 33 so, 8 with the stop raised inside OmegaConf."""
    done = subprocess.run([sys.executable, "-c", STOPPED_WHILE_OMEGACONF_LOADS,
                           str(Path(__file__).parents[1] / "conf" / "train.yaml")],
                          capture_output=True, text=True, timeout=120, env=ENV)
    outcomes = ast.literal_eval(done.stdout)
    assert list(outcomes) == ["stopped after"] and outcomes["stopped after"] >= 40, done.stderr


@pytest.mark.parametrize("seed", range(5))
def test_a_signal_at_a_random_moment_leaves_the_run_with_its_true_status(tmp_path, seed):
    """Seeded random faults: SIGINT or SIGTERM, to the training process or to its whole group
    (the sender too, as a terminal's Ctrl-C or Slurm does), at a random moment of start-up,
    of training or of the end (results, model), with MLflow in the process or not, half of them
    while another process holds the store's write lock for 5 s. Whatever the moment: no
    traceback; exit 0 with the run FINISHED and every epoch, or 130/143 with the run KILLED
    (outcome interrupted) and the epochs before it, or no run when none had started."""
    draw = random.Random(seed)
    epochs, signum = 4, draw.choice([signal.SIGINT, signal.SIGTERM])
    to_group, locked = draw.random() < 0.5, draw.random() < 0.5
    log_model = draw.choice(["true", "false"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start(train_command(tmp_path, uri, f"trainer.epochs={epochs}",
                                  f"tracking.log_model={log_model}"), tmp_path, "train.log")
    moment = draw.choice(["start-up", "training", "end"])
    if moment == "start-up":
        # From its sender's start (once its checks have composed the config), not from the
        # exec: a stop while Python itself still imports `site` is Python's traceback, not ours
        # (a busy CI machine took over 0.2 s to get there).
        wait_for(lambda: any("mlp_experiments.sender" in line
                             for line in children_running(process.pid).values()), process,
                 every=0.02)
        time.sleep(draw.uniform(0.0, 3.0))
    else:
        logged_epochs(uri, draw.randint(1, epochs - 1) if moment == "training" else epochs,
                      process)
        time.sleep(draw.uniform(0.0, 0.5))
    with sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, timeout=60) as locker:
        if locked:
            locker.execute("BEGIN EXCLUSIVE")
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        if locked:
            time.sleep(5)
            locker.execute("COMMIT")
    code, log = finish(process, tmp_path, "train.log")
    fault = f"{signal.Signals(signum).name} at {moment}, group {to_group}, locked {locked}"
    assert "Traceback" not in log, f"{fault}\n{log}"
    assert code in (0, 128 + signum), f"{fault}: exit {code}\n{log}"
    for run in runs(uri):
        recorded = steps(uri, run.info.run_id)
        if run.info.status == "FINISHED":
            assert recorded == list(range(1, epochs + 1)), fault
        else:
            assert code != 0 and run.info.status == "KILLED", f"{fault}: {run.info.status}"
            assert run.data.tags["outcome"] == "interrupted", fault
            assert recorded == list(range(1, len(recorded) + 1)), fault
    if code == 0:
        assert [run.info.status for run in runs(uri)] == ["FINISHED"], fault


# A Ctrl-C that lands inside OmegaConf while it updates a node: the node is left half-built
# and its cleanup fails, with an error of ours (UserError, where we translate OmegaConf's) or of
# OmegaConf's (AttributeError).
CUT_MID_UPDATE = """
import os, signal
from mlp_experiments.errors import UserError
def cut_mid_update(*arguments, **options):
    try:
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        raise {error}("'NoneType' object has no attribute '_invalidate_flags_cache'")
"""


@pytest.mark.parametrize("error", ["UserError", "AttributeError"])
@pytest.mark.parametrize(("module", "composes"), [("train", "check_command_line"),
                                                   ("sweep.command", "run_sweep")])
def test_an_error_a_ctrl_c_caused_ends_the_command_interrupted(module, composes, error):
    """That error is the Ctrl-C's doing: exit 130, quietly. Seen in CI as "error: 'NoneType'
    object has no attribute '_invalidate_flags_cache'" and exit 1, then as OmegaConf's
    AttributeError and its traceback (a Ctrl-C at 0.3 s of mlp-train's start)."""
    script = (CUT_MID_UPDATE.format(error=error) + "import sys\n"
              f"import mlp_experiments.{module} as command\n"
              f"command.{composes} = cut_mid_update\n"
              "sys.argv = ['mlp-command']\n"
              f"command.{'cli' if module == 'train' else 'main'}()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 130, done.stdout + done.stderr
    assert "error" not in (done.stdout + done.stderr).lower()


def test_a_run_whose_stop_fails_a_library_in_its_cleanup_ends_interrupted_not_crashed(tmp_path):
    """The same inside a run, as it opens its record: the run ends KILLED (interrupted), the
    status of a Ctrl-C, not FAILED (crashed)."""
    script = (CUT_MID_UPDATE.format(error="AttributeError") + "import sys\n"
              "from pathlib import Path\n"
              "from mlp_experiments import tracking\n"
              "from mlp_experiments.errors import stop_on_signals\n"
              "tracking.Sender.follow = lambda folder: None  # its journal is read back\n"
              "tracking.RunRecord.start = cut_mid_update\n"
              "stop_on_signals()\n"
              "with tracking.RunRecord(None, Path(sys.argv[1])).recording(\n"
              "        None, {}, None, None, None):\n"
              "    pass\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert "AttributeError" in done.stderr, done.stderr  # on its way to the command's end
    records = [json.loads(line) for line in (tmp_path / "run" / "journal.jsonl").open()]
    assert [(r["kind"], r["outcome"]) for r in records] == [("end", "interrupted")]


def test_a_trial_whose_stop_fails_a_library_in_its_cleanup_is_interrupted_and_queued_again():
    """The same inside a sweep's trial: it is interrupted and queued again to resume, as after
    a plain Ctrl-C, not an error that ends it for good."""
    script = (CUT_MID_UPDATE.format(error="AttributeError") + "import optuna\n"
              "from mlp_experiments.errors import stop_on_signals\n"
              "from mlp_experiments.sweep import spec, worker\n"
              "sweep = spec.load_sweep('search_mlp', [])\n"
              "trainer = worker.TrialTrainer(sweep, [], worker.parse_space(sweep.space), None, "
              "None)\n"
              "trainer.train = cut_mid_update\n"
              "study = optuna.create_study()\n"
              "stop_on_signals()\n"
              "try:\n"
              "    study.optimize(trainer, n_trials=1)\n"
              "except KeyboardInterrupt:\n"
              "    print([(t.state.name, t.user_attrs) for t in study.trials])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    (trials,) = [line for line in done.stdout.splitlines() if line.startswith("[(")]
    assert "('FAIL', {" in trials and "'outcome': 'interrupted'" in trials, trials
    assert "('WAITING', {'resumes': 0})" in trials, trials  # queued again, to resume


@pytest.mark.parametrize("delay_s", [0.1, 0.3, 0.6])
def test_ctrl_c_while_the_command_loads_ends_it_quietly(tmp_path, delay_s):
    """Ctrl-C to the whole group within its first second, while the training command and its
    sender are still importing (seconds on a busy machine): exit 130 and no traceback from
    either, no run left RUNNING."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    process = start(train_command(tmp_path, uri), tmp_path, "train.log")
    time.sleep(delay_s)
    os.killpg(process.pid, signal.SIGINT)
    code, log = finish(process, tmp_path, "train.log")
    assert code == 130 and "Traceback" not in log, log
    assert all(run.info.status == "KILLED" for run in runs(uri))


def test_ctrl_c_while_a_sweeps_workers_load_ends_it_quietly(tmp_path):
    """Ctrl-C to the whole group while the worker processes load (they import torch and Optuna
    for seconds): exit 130 and no traceback from the command or a worker."""
    command = sweep_command(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "loading",
                            "sweep.n_workers=2")
    process = start(command, tmp_path, "sweep.log")

    def workers_started() -> bool:
        return any("--multiprocessing-fork" in command
                   for command in children_running(process.pid).values())

    wait_for(workers_started, process, every=0.02)
    time.sleep(0.5)  # inside their imports
    os.killpg(process.pid, signal.SIGINT)
    code, log = finish(process, tmp_path, "sweep.log")
    assert code == 130 and "Traceback" not in log, log


def test_the_servers_of_a_sigkilled_mlp_ui_die_with_it_and_free_their_ports(tmp_path):
    import psutil
    from conftest import answers, two_free_ports

    port, dashboard_port = two_free_ports()
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    ui = start([sys.executable, "-m", "mlp_experiments.ui", f"ui.port={port}",
                f"ui.dashboard_port={dashboard_port}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"ui.storage=sqlite:///{tmp_path / 'optuna.db'}"], tmp_path, "ui.log")
    urls = (f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{dashboard_port}/")
    wait_for(lambda: all(answers(url) for url in urls) or ui.poll() is not None, every=1)
    assert ui.poll() is None, (tmp_path / "ui.log").read_text()
    servers = [child for child in psutil.Process(ui.pid).children(recursive=True)]
    groups = {os.getpgid(child.pid) for child in servers} - {os.getpgid(ui.pid)}
    assert len(groups) >= 2  # MLflow's and the dashboard's process groups
    ui.send_signal(signal.SIGKILL)
    ui.wait()
    wait_for(lambda: not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                             for child in servers), timeout=60)
    assert not any(answers(url) for url in urls)


def test_mlp_ui_starts_the_dashboard_once_a_sweep_creates_the_study_storage(tmp_path):
    """No study storage at the start: the MLflow UI alone (without MLflow's job runner and its
    seven huey consumers: no GenAI jobs here); the dashboard follows once the file appears."""
    from conftest import answers, two_free_ports

    port, dashboard_port = two_free_ports()
    storage = tmp_path / "optuna.db"
    ui = start([sys.executable, "-m", "mlp_experiments.ui", f"ui.port={port}",
                f"ui.dashboard_port={dashboard_port}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"ui.storage=sqlite:///{storage}"], tmp_path, "ui.log")
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health") or ui.poll() is not None,
                 every=1)
        assert ui.poll() is None, (tmp_path / "ui.log").read_text()
        log = (tmp_path / "ui.log").read_text()
        assert "optuna-dashboard starts when a sweep creates it" in log
        commands = list(children_running(ui.pid, recursive=True).values())
        assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands
        optuna.create_study(study_name="later", storage=f"sqlite:///{storage}")
        wait_for(lambda: answers(f"http://127.0.0.1:{dashboard_port}/") or ui.poll() is not None,
                 every=1)
        assert ui.poll() is None, (tmp_path / "ui.log").read_text()
        assert (f"Optuna dashboard: http://127.0.0.1:{dashboard_port}"
                in (tmp_path / "ui.log").read_text())
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=60)
