"""Slurm for real: a one-node cluster of Debian's slurmctld, slurmd and munge, started on
loopback in a temporary folder (as ../shared/slurm/local-cluster.sh does), runs Hydra multirun
jobs through hydra-submitit-launcher and sweep workers as a submitit job array. Faults are
real: a worker cancelled with scancel, jobs warned of a preemption as Slurm warns them.

This cluster has no accounting database, so sacct answers "accounting storage is disabled":
the Hydra plugin waits for its jobs' result files and, when it asks sacct for their states in
between, submitit prints that answer and a warning that it does without. That noise in the
multirun's output is harmless; the sweep's command asks squeue, never sacct."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import free_port, worker_of
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_faults import child_runs, running_trial, runs, steps, wait_for

from mlp_experiments.stores import sqlite_lock
from mlp_experiments.sweep.study import FINISHED_OUTCOMES, mlflow_run_of

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
SEARCH_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
MISSING = [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p, path=SEARCH_PATH) is None]
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(bool(MISSING), reason=f"no Slurm here ({', '.join(MISSING)} missing): "
                       f"apt-get install slurmctld slurmd slurm-client munge"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the one-node cluster's daemons run as root"),
]
# One CPU per job: the node's two CPUs run two jobs at once. Torch's threads follow.
JOB = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
WORKER = ["sweep.slurm.cpus_per_task=1", "sweep.slurm.mem_gb=1"]
# ~0.5 s an epoch on one CPU: a training of 14-16 epochs is still going seconds after the test
# sees its second epoch, when it cancels or preempts it.
LONG = ["data=synthetic", "data.train_size=30000", "trainer.device=cpu", "optimizer.lr=0.05",
        "tracking.log_model=false"]


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"),
                    "PATH": SEARCH_PATH, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              check=True, timeout=60).stdout

    def release_requeued(self) -> list[str]:
        """Slurm holds a requeued job back for two minutes (its BeginTime); let it start now.
        Returns the jobs released; none when a busy slurmctld does not answer squeue in time
        (the caller asks again at its next look)."""
        listed = subprocess.run(["squeue", "--noheader", "--array", "--format", "%i %r"],
                                env=self.env, capture_output=True, text=True, timeout=60)
        if listed.returncode:
            return []
        held = [line.split()[0] for line in listed.stdout.splitlines()
                if line.split()[1:] == ["BeginTime"]]
        for job in held:
            self.run("scontrol", "update", f"jobid={job}", "StartTime=now")
        return held


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    started_munge = start_munge()
    write_config(folder)
    cluster = Cluster(folder)
    try:
        for daemon in ("slurmctld", "slurmd"):
            cluster.run(daemon, "-f", str(folder / "slurm.conf"))
        wait_for(lambda: "idle" in cluster.run("sinfo", "--noheader", "--format", "%T"),
                 timeout=30, every=0.5)
        yield cluster
    finally:
        # No job outlives the cluster (a failed test's jobs would wait on it for ever).
        subprocess.run(["scancel", "--user", "root"], env=cluster.env, capture_output=True,
                       timeout=60)
        for name in ("slurmd", "slurmctld"):
            stop(folder / f"{name}.pid")
        if started_munge:
            stop(Path("/run/munge/munged.pid"))


def start_munge() -> bool:
    """Start munged (Slurm's authentication) unless one answers already; True if started."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return False
    key = Path("/etc/munge/munge.key")
    for path in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, "munge", "munge")
    if not key.exists():
        subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, env={"PATH": SEARCH_PATH})
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    subprocess.run(["runuser", "-u", "munge", "--", shutil.which("munged", path=SEARCH_PATH),
                    "--pid-file=/run/munge/munged.pid"], check=True)
    return True


def write_config(folder: Path) -> None:
    """A root-run node without cgroups, reached on loopback, on free ports, its state and logs
    in `folder`. KillWait: scancel's SIGTERM is followed by SIGKILL 5 s later (30 s default)."""
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    (folder / "slurm.conf").write_text(f"""\
ClusterName=mlptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")


def stop(pid_file: Path) -> None:
    """Stop a daemon by its pid file and wait until it is gone."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 15)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, 9)


def train_jobs(folder: Path, uri: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mlp_experiments.train", "-m", "hydra/launcher=slurm", *JOB,
            f"tracking.uri={uri}", f"trainer.checkpoint_dir={folder / 'checkpoints'}",
            *overrides]


def sweep_workers(folder: Path, uri: str, name: str, n_trials: int, *overrides: str) -> list[str]:
    path = folder / f"{name}.yaml"
    path.write_text(f"""
study_name: {name}
space:
  model.dropout: interval(0.0, 0.1)
sampler: random
pruner: none
n_trials: {n_trials}
launcher: slurm
""")
    return [sys.executable, "-m", "mlp_experiments.sweep", f"sweep={path}", *WORKER,
            f"sweep.storage=sqlite:///{folder / 'optuna.db'}", f"tracking.uri={uri}",
            f"trainer.checkpoint_dir={folder / 'checkpoints'}", *overrides]


def start(slurm: Cluster, command: list[str], folder: Path, log: str) -> subprocess.Popen:
    with open(folder / log, "w") as output:
        process = subprocess.Popen(command, cwd=folder, env=slurm.env, stdout=output,
                                   stderr=subprocess.STDOUT)
    process.log = folder / log  # what test_faults.wait_for shows when it ends too soon
    return process


def finish(process: subprocess.Popen, folder: Path, log: str) -> str:
    try:
        code = process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()  # no command of a failed test outlives it
        process.wait()
        raise
    output = (folder / log).read_text()
    assert code == 0, output + job_errors(folder)
    return output


def job_errors(folder: Path) -> str:
    """The end of each Slurm job's stderr under `folder`: where a failed job says why."""
    return "".join(f"\n--- {path}\n{path.read_text()[-2000:]}"
                   for path in sorted(folder.rglob("*_log.err")))


STALL_S = 300  # a wait fails after this long without progress (a new epoch, a released job)


def until_ended(processes: list[subprocess.Popen], progress) -> None:
    """Wait for the processes, calling `progress` (a count that grows while work is done) every
    second; fail, stopping them, only after STALL_S without progress."""
    last, since = None, time.monotonic()
    while any(process.poll() is None for process in processes):
        count = progress()
        if count != last:
            last, since = count, time.monotonic()
        if time.monotonic() - since > STALL_S:
            for process in processes:
                process.kill()
            pytest.fail(f"no progress for {STALL_S} s (at {last})")
        time.sleep(1)


def load(folder: Path, name: str):
    storage = f"sqlite:///{folder / 'optuna.db'}"
    with sqlite_lock(storage):
        return optuna.load_study(study_name=name, storage=storage)


def test_a_multirun_runs_each_job_as_a_slurm_job_recording_where_it_ran(slurm, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = train_jobs(tmp_path, uri, "data=synthetic", "trainer.epochs=2",
                         "trainer.seed=0,1")
    finish(start(slurm, command, tmp_path, "multirun.log"), tmp_path, "multirun.log")

    found = runs(uri)
    assert sorted(run.data.params["trainer.seed"] for run in found) == ["0", "1"]
    assert all(run.info.status == "FINISHED" for run in found)
    assert all(steps(uri, run.info.run_id) == [1, 2] for run in found)
    jobs = {run.data.tags["slurm_job_id"] for run in found}
    assert len(jobs) == 2  # one array task each: <array>_0 and <array>_1
    assert {job.split("_")[1] for job in jobs} == {"0", "1"}
    logs = list(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))
    assert len(logs) == 2


def test_a_sweep_runs_its_workers_as_one_job_array_until_the_study_is_complete(slurm, tmp_path):
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "slurm_sweep"
    command = sweep_workers(tmp_path, uri, name, 4, "sweep.n_workers=2", "data=synthetic",
                            "trainer.epochs=2")
    output = finish(start(slurm, command, tmp_path, "sweep.log"), tmp_path, "sweep.log")

    array = output.split("as Slurm job array ")[1].split(":")[0]
    assert f"{array}_0 {array}_1" in output
    assert "trials: 4/4 ended" in output
    assert (tmp_path / "slurm" / name / f"{array}_0" / f"{array}_0_0_log.out").exists()
    study = load(tmp_path, name)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    children = child_runs(uri, name)
    assert len(children) == 4 and all(run.info.status == "FINISHED" for run in children)
    assert {run.data.tags["slurm_job_id"].split("_")[0] for run in children} == {array}
    assert {run.data.tags["slurm_array_task_id"] for run in children} <= {"0", "1"}


@pytest.mark.faults
def test_a_worker_cancelled_mid_trial_has_its_trial_retried_from_its_checkpoint(slurm, tmp_path):
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "cancelled"
    command = sweep_workers(tmp_path, uri, name, 3, "sweep.n_workers=2", *LONG,
                            "trainer.epochs=14")
    sweep = start(slurm, command, tmp_path, "sweep.log")

    victim = running_trial(tmp_path, name, 2, sweep)
    worker = worker_of(victim)
    # Slurm cancels a job with SIGCONT and SIGTERM, which submitit ignores, and SIGKILL
    # KillWait later. The test sends that SIGKILL itself (the one node is this machine), at a
    # known epoch of the trial, then cancels the job: waiting for Slurm's let the worker train
    # on to its trial's end and into the next one (seen in CI, at 0.3 s an epoch; a worker
    # frozen first is woken by the SIGCONT).
    os.kill(worker.pid, signal.SIGKILL)
    assert load(tmp_path, name).trials[victim.number].state == TrialState.RUNNING
    slurm.run("scancel", worker.slurm_job)
    finish(sweep, tmp_path, "sweep.log")

    study = load(tmp_path, name)
    ended = [t for t in study.trials if t.user_attrs.get("outcome") in FINISHED_OUTCOMES
             and t.state != TrialState.FAIL]
    assert len(ended) == 3  # exactly n_trials, the cancelled one's retry among them
    (retry,) = [t for t in ended if t.user_attrs.get("resumes") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    client = MlflowClient(uri)
    lost = client.get_run(mlflow_run_of(victim))
    assert lost.info.status == "FAILED" and lost.data.tags["outcome"] == "lost"
    retried = client.get_run(mlflow_run_of(retry))
    assert int(retried.data.tags["resumed_after_epoch"]) >= 2
    assert steps(uri, retried.info.run_id) == list(range(1, 15))
    assert all(run.info.status != "RUNNING" for run in child_runs(uri, name))


@pytest.mark.faults
def test_preempted_jobs_are_requeued_and_resume_from_their_checkpoints(slurm, tmp_path):
    """Slurm warns a job of its time limit or of a preemption with SIGUSR2 (submitit asks for
    it with --signal=USR2@signal_delay_s). The test sends it as Slurm would, with scancel
    --signal=USR2, to a multirun job and a sweep worker once each has trained two epochs,
    instead of waiting for a real time limit (slurmctld checks those every 30 s: a test that
    needs a quiet machine). submitit requeues each job, and each training goes on from its last
    epoch's checkpoint (released from Slurm's two-minute hold on requeued jobs). Every wait is
    bounded by progress: it fails after STALL_S without a new epoch, not after a fixed time."""
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "preempted"
    epochs = 16
    multirun = start(slurm, train_jobs(tmp_path, uri, *LONG, f"trainer.epochs={epochs}",
                                       "trainer.seed=7"), tmp_path, "multirun.log")
    sweep = start(slurm, sweep_workers(tmp_path, uri, name, 1, *LONG,
                                       f"trainer.epochs={epochs}"), tmp_path, "sweep.log")
    signalled, released = set(), []

    def progress() -> int:
        """Epochs logged so far; preempts each job once, after its second epoch."""
        logged = 0
        for run in runs(uri):
            epochs_done = len(steps(uri, run.info.run_id))
            logged += epochs_done
            job = run.data.tags.get("slurm_job_id")
            if run.info.status == "RUNNING" and epochs_done >= 2 and job and \
                    job not in signalled:
                slurm.run("scancel", "--signal=USR2", job)
                signalled.add(job)
        released.extend(slurm.release_requeued())
        return logged

    until_ended([multirun, sweep], progress)
    finish(multirun, tmp_path, "multirun.log")
    output = finish(sweep, tmp_path, "sweep.log")
    assert len(signalled) == 2 and len(released) >= 2, output

    client = MlflowClient(uri)
    (job_run,) = [run for run in runs(uri) if run.data.params.get("trainer.seed") == "7"]
    assert job_run.info.status == "FINISHED"  # one run, continued after each requeue
    assert int(job_run.data.tags["slurm_restart_count"]) >= 1
    assert int(job_run.data.tags["resumed_after_epoch"]) >= 1
    assert steps(uri, job_run.info.run_id) == list(range(1, epochs + 1))

    study = load(tmp_path, name)
    (completed,) = study.get_trials(states=(TrialState.COMPLETE,))
    interrupted = [t for t in study.trials if t.user_attrs.get("outcome") == "interrupted"]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    assert completed.user_attrs["resumes"] in {t.number for t in interrupted}
    final = client.get_run(mlflow_run_of(completed))
    assert int(final.data.tags["resumed_after_epoch"]) >= 1
    assert steps(uri, final.info.run_id) == list(range(1, epochs + 1))
    for trial in interrupted:
        assert client.get_run(mlflow_run_of(trial)).info.status == "KILLED"
    assert all(run.info.status != "RUNNING" for run in child_runs(uri, name))
