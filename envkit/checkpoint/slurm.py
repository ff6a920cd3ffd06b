"""SLURM: requeue the job after a SIGUSR1 stop saved its checkpoint.

The sbatch lines that make SLURM send the signal and allow the requeue are in README
("Preemption under SLURM").
"""

from __future__ import annotations

import os
import shutil
import subprocess

from envkit.errors import RequeueFailed

__all__ = ["RequeueFailed", "requeue_after_stop", "requeue_job", "slurm_job_id"]

SCONTROL_TIMEOUT_S = 60


def slurm_job_id() -> str | None:
    job = os.environ.get("SLURM_JOB_ID", "").strip()
    return job or None


def requeue_job(job_id: str | None = None) -> None:
    """Run ``scontrol requeue JOB``: SLURM puts the job back in the queue and ends this run."""
    job = job_id or slurm_job_id()
    if job is None:
        raise RequeueFailed("SLURM_JOB_ID is not set: this is not a SLURM job, so there is nothing to requeue")
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise RequeueFailed(f"scontrol is not on PATH; the checkpoint is saved: requeue job {job} by hand (scontrol requeue {job})")
    try:
        done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RequeueFailed(f"scontrol requeue {job} failed ({exc}); the checkpoint is saved: resubmit the job") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise RequeueFailed(
            f"scontrol requeue {job} exited {done.returncode} ({reason[-1] if reason else 'no message'}); "
            "the checkpoint is saved: submit the job with --requeue or resubmit it"
        )


def requeue_after_stop(rank: int) -> bool:
    """After a SIGUSR1 stop's checkpoint is durable: rank 0 requeues a SLURM job. True once requeued
    (on every rank, so no rank asks again); False outside SLURM."""
    if slurm_job_id() is None:
        return False
    if rank == 0:
        requeue_job()
    return True
