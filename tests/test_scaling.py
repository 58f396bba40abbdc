"""The shared topology without Docker: a real PostgreSQL (a throw-away cluster on loopback), an
MLflow tracking server on it, and several sweep worker processes on one study."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from conftest import worker_of
from mlflow import MlflowClient
from optuna.trial import TrialState

from mlp_experiments.config.compose import CONF_DIR


def start_workers(count: int, sweep_path: Path, postgres: str, mlflow_uri: str, name: str,
                  folder: Path) -> list[subprocess.Popen]:
    arguments = [f"sweep={sweep_path}", f"sweep.storage={postgres}/postgres",
                 "data=synthetic", "trainer.device=cpu", "tracking.log_model=false",
                 f"tracking.uri={mlflow_uri}", f"tracking.experiment={name}",
                 f"trainer.checkpoint_dir={folder / 'checkpoints'}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, "-m", "mlp_experiments.sweep", *arguments],
                             cwd=folder, env=environment, stdout=subprocess.DEVNULL,
                             stderr=open(folder / f"worker{index}.log", "w"))
            for index in range(count)]


def wait_all(workers: list[subprocess.Popen], folder: Path) -> None:
    codes = [worker.wait(timeout=600) for worker in workers]
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(folder.glob("worker*.log")))
    assert codes == [0] * len(workers), logs


def sweep_yaml(folder: Path, name: str, extra: str = "", n_trials: int = 6) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"""
study_name: {name}
overrides: [trainer.epochs=2{extra}]
space:
  optimizer.lr: tag(log, interval(0.01, 0.5))
sampler: random
pruner: none
n_trials: {n_trials}
""")
    return path


def frozen_running_trial(storage: str, name: str, freeze, thaw):
    """A trial RUNNING with an epoch reported, its worker frozen (`freeze(trial)`, SIGSTOP)
    while the trial still runs, checked once frozen: the study is polled every second, which
    a busy machine can stretch past the trial's end. A trial that ended first is thawed
    (`thaw(trial)`) and the next one taken."""
    passed = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values
                   and t.number not in passed]
        if running:
            victim = running[0]
            freeze(victim)
            now = optuna.load_study(study_name=name, storage=storage).trials[victim.number]
            if now.state == TrialState.RUNNING and "outcome" not in now.user_attrs:
                return victim
            thaw(victim)
            passed.add(victim.number)
    raise AssertionError("no trial ran an epoch")


def check_study(postgres: str, mlflow_uri: str, name: str, n_trials: int = 6) -> list:
    """The study has exactly n_trials complete, each with its FINISHED child run, and no child
    run is left RUNNING."""
    study = optuna.load_study(study_name=name, storage=f"{postgres}/postgres")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n_trials
    assert len({t.user_attrs["config_hash"] for t in complete}) == n_trials  # none ran twice
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(name)
    (parent,) = client.search_runs([experiment.experiment_id],
                                   f"tags.`optuna.study_name` = '{name}'")
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert not [c for c in children if c.info.status == "RUNNING"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.info.run_name for c in finished) == sorted(
        f"{name}-{t.number}" for t in complete)
    return study.trials


def test_three_workers_on_postgresql_finish_exactly_n_trials(postgres, tracking_server,
                                                             tmp_path):
    workers = start_workers(3, sweep_yaml(tmp_path, "scaling"), postgres, tracking_server,
                            "scaling", tmp_path)
    wait_all(workers, tmp_path)
    trials = check_study(postgres, tracking_server, "scaling")
    assert len(trials) == 6  # nothing lost, nothing duplicated
    assert len({t.user_attrs["worker"] for t in trials}) > 1  # the workers shared the study
    # each command wrote the best preset where it ran, not into the package
    assert (tmp_path / "outputs" / "presets" / "experiment" / "best" / "scaling.yaml").is_file()
    assert not list(CONF_DIR.rglob("*scaling*"))


def test_a_worker_killed_mid_trial_loses_nothing(postgres, tracking_server, tmp_path):
    name = "scaling_fault"
    workers = start_workers(3, sweep_yaml(tmp_path, name, ", data.train_size=20000,"
                                          " trainer.epochs=6"),
                            postgres, tracking_server, name, tmp_path)
    victim = frozen_running_trial(f"{postgres}/postgres", name,
                                  lambda trial: os.kill(worker_of(trial).pid, signal.SIGSTOP),
                                  lambda trial: os.kill(worker_of(trial).pid, signal.SIGCONT))
    pid = worker_of(victim).pid
    os.kill(pid, signal.SIGKILL)
    wait_all([w for w in workers if w.pid != pid], tmp_path)
    trials = check_study(postgres, tracking_server, name)
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL and "outcome" not in killed.user_attrs
    retry = [t for t in trials if t.state == TrialState.COMPLETE
             and t.params == killed.params]
    assert len(retry) == 1  # the killed trial ran again, once, on a surviving worker
    assert len(trials) == 7  # six finished trials and the killed one, recorded as failed
