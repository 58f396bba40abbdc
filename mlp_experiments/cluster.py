"""Where a run runs: the Slurm job around this process, read from the variables Slurm sets."""

from __future__ import annotations

import os


def slurm_job_id() -> str | None:
    """The id squeue, scancel and submitit's log names use: `<array>_<task>` for a task of a
    job array, else the job's id; None outside Slurm."""
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def slurm_tags() -> dict[str, str]:
    """The MLflow tags that say which Slurm job (and array task, and restart) a run ran in."""
    job = slurm_job_id()
    if job is None:
        return {}
    tags = {"slurm_job_id": job, "slurm_restart_count": str(restart_count())}
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        tags["slurm_array_task_id"] = os.environ["SLURM_ARRAY_TASK_ID"]
    return tags


def restart_count() -> int:
    """How many times Slurm requeued this job (a time limit, a preemption): 0 on its first run."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
