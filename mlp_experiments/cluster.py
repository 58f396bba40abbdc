"""Where a run runs: the Slurm job around this process, read from the variables Slurm sets;
and whether the jobs a command would submit fit the cluster's partition at all."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

from mlp_experiments.errors import UserError


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


def partition_limits(partition: str | None) -> tuple[str, int, int, int | None] | None:
    """(name, CPUs, memory in MB, time limit in minutes or None) of the partition's largest
    node, the default partition where `partition` is None; None where sinfo cannot say."""
    try:
        listing = subprocess.run(["sinfo", "--noheader", "--format", "%P %c %m %l"],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split() for line in listing.stdout.splitlines() if len(line.split()) == 4]
    rows = [row for row in rows
            if (row[0].rstrip("*") == partition if partition else row[0].endswith("*"))]
    if listing.returncode != 0 or not rows:
        return None
    cpus = max(int(row[1].rstrip("+")) for row in rows)
    memory_mb = max(int(row[2].rstrip("+")) for row in rows)
    return rows[0][0].rstrip("*"), cpus, memory_mb, minutes(rows[0][3])


def minutes(limit: str) -> int | None:
    """sinfo's time limit (`infinite`, `1-00:00:00`, `2:00:00`, `30:00`) in minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", limit)
    if not match:
        return None
    days, hours, mins, _ = (int(part or 0) for part in match.groups())
    return (days * 24 + hours) * 60 + mins


def check_fits_partition(path: str, settings: dict[str, Any]) -> None:
    """Jobs that ask more CPUs, memory or time than any node of their partition has would stay
    PENDING for ever (reason PartitionConfig): refused before submission, with the values
    that fit."""
    limits = partition_limits(settings.get("partition"))
    if limits is None:
        return
    name, cpus, memory_mb, limit = limits
    fixes = []
    if (settings.get("cpus_per_task") or 1) > cpus:
        fixes.append(f"{path}.cpus_per_task={cpus}")
    if (settings.get("mem_gb") or 0) * 1024 > memory_mb:
        fixes.append(f"{path}.mem_gb={max(memory_mb // 1024, 1)}")
    if limit is not None and (settings.get("timeout_min") or 0) > limit:
        fixes.append(f"{path}.timeout_min={limit}")
    if fixes:
        raise UserError(
            f"Slurm would keep these jobs PENDING for ever (PartitionConfig): each asks "
            f"{settings.get('cpus_per_task')} CPUs, {settings.get('mem_gb')} GB and "
            f"{settings.get('timeout_min')} min, and partition {name}'s largest node has {cpus} "
            f"CPUs and {memory_mb} MB" + (f", its time limit {limit} min" if limit else "")
            + f". Set {' '.join(fixes)}, or choose another partition ({path}.partition=...)."
        )
