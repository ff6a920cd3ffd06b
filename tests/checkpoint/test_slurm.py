"""SLURM preemption: SIGUSR1 saves, then ``scontrol requeue``. No SLURM cluster exists here:
a stand-in ``scontrol`` script on PATH records the arguments it was called with."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402
from envkit.checkpoint.slurm import RequeueFailed  # noqa: E402


def stand_in_scontrol(folder: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int = 0) -> Path:
    bin_dir, log = folder / "bin", folder / "scontrol.log"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {str(log)!r}\necho "scontrol: error: Job is not requeueable" >&2\nexit {exit_code}\n'
                      if exit_code else f'#!/bin/sh\necho "$@" >> {str(log)!r}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def preempt(folder: Path, *, requeue: bool, signum: int = signal.SIGUSR1) -> envkit.CheckpointManager:
    mgr = envkit.CheckpointManager(folder / "ck", project="p", every_n_steps=100, requeue=requeue)
    mgr.handle_signals()
    try:
        os.kill(os.getpid(), signum)
        assert mgr.should_stop
        path = mgr.save(epoch=0, step=7, model=torch.nn.Linear(2, 2))
        assert path is not None and envkit.verify(path).ok  # saved before anything else
    finally:
        mgr.close()
    return mgr


@pytest.mark.filterwarnings("ignore::envkit.errors.EphemeralDirectoryWarning")
def test_slurm_requeue_with_stand_in_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = stand_in_scontrol(tmp_path, monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    mgr = preempt(tmp_path, requeue=True)
    assert mgr.requeued and mgr.exit_code == 128 + signal.SIGUSR1
    assert log.read_text() == "requeue 4242\n"


@pytest.mark.filterwarnings("ignore::envkit.errors.EphemeralDirectoryWarning")
@pytest.mark.parametrize(
    "job, requeue, signum",
    [("4242", False, signal.SIGUSR1), (None, True, signal.SIGUSR1), ("4242", True, signal.SIGTERM)],
    ids=["requeue-off", "not-under-slurm", "sigterm-is-not-a-preemption-warning"],
)
def test_slurm_no_requeue_with_stand_in_scontrol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: str | None, requeue: bool, signum: int
) -> None:
    log = stand_in_scontrol(tmp_path, monkeypatch)
    if job is None:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    else:
        monkeypatch.setenv("SLURM_JOB_ID", job)
    mgr = preempt(tmp_path, requeue=requeue, signum=signum)
    assert not mgr.requeued and not log.exists()


@pytest.mark.filterwarnings("ignore::envkit.errors.EphemeralDirectoryWarning")
def test_slurm_requeue_refused_by_stand_in_scontrol_keeps_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in_scontrol(tmp_path, monkeypatch, exit_code=1)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    mgr = envkit.CheckpointManager(tmp_path / "ck", project="p", requeue=True)
    mgr.handle_signals()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(RequeueFailed, match=r"scontrol requeue 4242 exited 1 \(scontrol: error: Job is not requeueable\)") as err:
            mgr.save(epoch=0, step=7, model=torch.nn.Linear(2, 2))
        assert err.value.exit_code == 1 and "\n" not in err.value.message
        assert mgr.latest() is not None and mgr.latest().step == 7
    finally:
        mgr.close()


def test_slurm_requeue_without_scontrol_names_the_manual_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from envkit.checkpoint.slurm import requeue_job

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RequeueFailed, match=r"scontrol is not on PATH.*scontrol requeue 99"):
        requeue_job("99")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(RequeueFailed, match="SLURM_JOB_ID is not set"):
        requeue_job()
