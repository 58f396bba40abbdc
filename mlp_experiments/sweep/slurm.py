"""A sweep's workers as one Slurm job array, submitted with submitit: the command submits
`sweep.n_workers` array tasks, each a worker on the study's storage, then follows the study
until it has its `n_trials`, printing its progress and the tasks' states.

Slurm's resources (partition, GPUs, CPUs, memory, time limit) come from
conf/hydra/launcher/slurm.yaml, the settings of `mlp-train -m hydra/launcher=slurm`, each
overridable with `sweep.slurm.<key>=...`. submitit moves the worker to the node as a pickle in
the jobs' folder, which this module creates for the user alone; the command itself never loads
one (it follows the study and squeue, not submitit's result files).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from mlp_experiments.cluster import check_fits_partition
from mlp_experiments.config.compose import compose_config
from mlp_experiments.config.hydra_node import check_launcher_settings
from mlp_experiments.errors import UserError, outside_libraries
from mlp_experiments.sweep.study import closed_trials
from mlp_experiments.sweep.worker import ParentRun

# The jobs' folders: <cwd>/slurm/<study>/<job id>/ hold submitit's files and the logs.
JOBS_DIR = Path("slurm")
FOLLOW_S = 5  # how often the command looks at the study and the queue
QUEUE_PATIENCE = 12  # squeue failures in a row (a minute) before the command gives up following

# Reasons a pending job gives that no wait clears: it asks what its partition, account or QOS
# can never grant (squeue's %r; Slurm's "Job Reason Codes").
NEVER_CLEARS = frozenset({"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit",
                          "BadConstraints", "InvalidAccount", "InvalidQOS"})
NEVER_CLEARS_WHY = "it asks more than its partition, account or QOS can ever grant"

# Keys of the launcher config that are Hydra's own (its sweep folder and job name).
HYDRA_ONLY = ("_target_", "submitit_folder", "name")


def job_settings(sweep: DictConfig) -> dict[str, Any]:
    """conf/hydra/launcher/slurm.yaml (typed by the plugin's SlurmQueueConf) with the sweep's
    `slurm` overrides; an unknown key or a wrong type is named."""
    from omegaconf.errors import OmegaConfBaseException

    launcher = compose_config(["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    try:
        settings = OmegaConf.merge(launcher, sweep.slurm)
    except OmegaConfBaseException as error:
        keys = ", ".join(k for k in launcher if k not in HYDRA_ONLY)
        raise UserError(f"sweep.slurm: {str(error).splitlines()[0]} (keys: {keys}).") from None
    ours = OmegaConf.masked_copy(settings, [k for k in settings if k not in HYDRA_ONLY])
    try:
        resolved = OmegaConf.to_container(ours, resolve=True)
    except OmegaConfBaseException as error:
        raise UserError(f"sweep.slurm: {str(error).splitlines()[0]}") from None
    check_launcher_settings("sweep.slurm", resolved)
    check_fits_partition("sweep.slurm", resolved)
    return resolved


class SlurmWorker(submitit.helpers.Checkpointable):
    """One array task: a sweep worker (worker.work). When Slurm warns of the time limit or a
    preemption (SIGUSR2), submitit requeues the task with this same worker; the trial it was
    training is queued again and resumes from its checkpoint."""

    def __init__(self, sweep: dict, training: list[str], parent_run_id: ParentRun,
                 tracking_uri: str | None, deadline: float | None):
        self.sweep, self.training = sweep, training
        self.parent_run_id, self.tracking_uri, self.deadline = parent_run_id, tracking_uri, deadline

    def __call__(self, index: int) -> None:
        from mlp_experiments.sweep.worker import run_worker

        # submitit's requeue exits (SystemExit) from its signal's handler, where it lands. The
        # signal is SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another; only a private
        # classmethod says which.
        preempted = submitit.JobEnvironment._usr_sig()
        signal.signal(preempted, outside_libraries(signal.getsignal(preempted)))
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or 1)
        run_worker(self.sweep, self.training, self.parent_run_id, self.tracking_uri, threads,
                   self.deadline, index)


def submit_workers(sweep: DictConfig, settings: dict[str, Any], training: list[str],
                   parent_run_id: ParentRun, tracking_uri: str | None,
                   deadline: float | None) -> list:
    """Submit the workers as one job array with `settings` (job_settings); print its ids and
    where their logs are."""
    settings = dict(settings)  # its submitit-only keys are taken out below
    folder = (JOBS_DIR / sweep.study_name).resolve()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # submitit's pickles: the user's only
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                     slurm_max_num_timeout=settings.pop("max_num_timeout"))
    settings.pop("array_parallelism")  # every worker at once
    executor.update_parameters(**executor_parameters(settings), name=f"sweep-{sweep.study_name}",
                               slurm_array_parallelism=sweep.n_workers)
    worker = SlurmWorker(OmegaConf.to_container(sweep), training, parent_run_id, tracking_uri,
                         deadline)
    try:
        jobs = executor.map_array(worker, range(sweep.n_workers))
    except (OSError, submitit.core.utils.FailedJobError) as error:
        raise UserError(f"sbatch refused the sweep's job array: {error}. Check the Slurm "
                        f"settings (sweep.slurm.<key>, conf/hydra/launcher/slurm.yaml).") from None
    print(f"submitted {len(jobs)} worker(s) as Slurm job array {array_id(jobs)}: "
          f"{' '.join(job.job_id for job in jobs)}", flush=True)
    print(f"  logs: {folder}/<job id>/<job id>_0_log.out and .err, e.g. {jobs[0].paths.stdout}",
          flush=True)
    return jobs


def executor_parameters(settings: dict[str, Any]) -> dict[str, Any]:
    """The launcher config's keys as submitit's executor takes them: the keys every cluster
    has as they are, Slurm's own prefixed with `slurm_` (as the Hydra plugin passes them)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    common = set(OmegaConf.structured(BaseQueueConf).keys())
    return {key if key in common else f"slurm_{key}": value for key, value in settings.items()
            if value is not None}


def array_id(jobs: list) -> str:
    return jobs[0].job_id.split("_")[0]


def follow(study, jobs: list, n_trials: int) -> int:
    """Print progress until the study has `n_trials` ended trials or no task of the array is
    left in the queue. Returns how many tasks ended with the study unfinished (died, cancelled
    or out of time), 0 once it is complete. Ctrl-C stops following, not the jobs."""
    array, last, failures = array_id(jobs), None, 0
    try:
        while True:
            ended = len(closed_trials(study))
            try:
                states = queue_states(array)
                failures = 0
            except subprocess.SubprocessError as error:
                failures += 1
                if failures >= QUEUE_PATIENCE:
                    raise UserError(f"squeue has not answered for a minute ({error}): follow "
                                    f"array {array} with squeue, then run the same command "
                                    f"again to finish the study and its report.") from None
                states = None
            queue = "squeue failed" if states is None else ", ".join(
                f"{n} {state}" for state, n in sorted(Counter(states.values()).items()))
            stuck = {state.partition(" (")[2].rstrip(")") for state in (states or {}).values()}
            if states and stuck <= NEVER_CLEARS:
                cancel(array)
                raise UserError(
                    f"Slurm array {array} can never start: its tasks are PENDING with reason "
                    f"{', '.join(sorted(stuck))} ({NEVER_CLEARS_WHY}). It is cancelled; fix the "
                    f"Slurm settings (sweep.slurm.<key>; squeue -j {array} -o %r says why) and "
                    f"run the same command again.")
            line = f"trials: {ended}/{n_trials} ended | Slurm array {array}: " \
                   f"{queue or 'no task left in the queue'}"
            if line != last:
                print(line, flush=True)
                last = line
            if ended >= n_trials:
                return 0
            if states == {}:
                return len(jobs)
            time.sleep(FOLLOW_S)
    except KeyboardInterrupt:
        raise UserError(f"stopped following: Slurm array {array} goes on with the study (scancel "
                        f"{array} stops it). Once it ended, run the same command again: it "
                        f"submits nothing more and writes the report.") from None


def queue_states(array: str) -> dict[str, str]:
    """Each task of the array still in Slurm's queue, with its state (PENDING, RUNNING, ...),
    a pending task's with the reason it waits: `PENDING (Resources)`."""
    listing = subprocess.run(["squeue", "--noheader", "--array", "--jobs", array,
                              "--format", "%i %T %r"], capture_output=True, text=True, timeout=60)
    if listing.returncode != 0:
        if "Invalid job id" in listing.stderr:  # the array left the controller's memory
            return {}
        raise subprocess.CalledProcessError(listing.returncode, listing.args,
                                            listing.stdout, listing.stderr)
    states = {}
    for task, state, reason in (line.split(maxsplit=2) for line in listing.stdout.splitlines()
                                if len(line.split()) == 3):
        states[task] = f"{state} ({reason})" if state == "PENDING" else state
    return states


def cancel(array: str) -> None:
    subprocess.run(["scancel", array], capture_output=True, timeout=60)

