"""check_consistency for real: two processes joined through one TCP store, gloo on CPU.

The mismatching rank runs from a second, real virtual environment whose numpy is
another release (.venv-numpy-other, built once from pip and reused).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.distributed.helpers import ROOT, rank_env, run_ranks, worker_commands

OTHER_VENV = ROOT / ".venv-numpy-other"
OTHER_NUMPY = "1.26.4"


def _site_packages(python: str) -> str:
    return subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="session")
def other_numpy_python() -> str:
    """A venv of the same Python that sees this one's packages, except for its own numpy.

    Its own site-packages come first on sys.path, so numpy (and its dist-info, which the
    fingerprint reads) is the other release; torch and the rest come from this venv
    through a .pth file that adds this venv's site folder.
    """
    import numpy

    if numpy.__version__ == OTHER_NUMPY:
        pytest.skip(f"this environment already has numpy {OTHER_NUMPY}; the test needs another release")
    python = OTHER_VENV / "bin" / "python"
    marker = OTHER_VENV / ".envkit-ready"
    if not marker.exists():
        shutil.rmtree(OTHER_VENV, ignore_errors=True)
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        made = subprocess.run([str(base), "-m", "venv", "--without-pip", str(OTHER_VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot create a second venv with {base}: {made.stderr.strip()[-200:]}")
        site = _site_packages(str(python))
        got = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, f"numpy=={OTHER_NUMPY}"],
            capture_output=True, text=True,
        )
        if got.returncode != 0:
            shutil.rmtree(OTHER_VENV, ignore_errors=True)
            pytest.skip(f"cannot install numpy {OTHER_NUMPY} into the second venv (no wheel reachable): {got.stderr.strip()[-200:]}")
        ours = _site_packages(sys.executable)
        Path(site, "zz-envkit-base.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        marker.touch()
    return str(python)


def stand_in_scontrol(folder: Path) -> tuple[dict[str, str], Path]:
    """A real executable named scontrol, first on PATH, that records its arguments (no SLURM here)."""
    bin_dir, log = folder / "bin", folder / "scontrol.log"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {str(log)!r}\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}, log


@pytest.mark.slow
def test_two_ranks_of_one_environment_pass_and_slurm_requeue_with_stand_in_scontrol(tmp_path: Path) -> None:
    """One pair of ranks (starting ranks is the slow part) runs three checks in turn."""
    env, log = stand_in_scontrol(tmp_path)
    results = run_ranks(worker_commands(2, tmp_path, ["consistency", "save_error", "slurm"]), envs=[rank_env(env)] * 2)
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
        reports = r.reports()
        assert reports["consistency"] == {"scenario": "consistency", "rank": r.rank, "ok": True, "value": 2}
        # SIGUSR1 reached rank 1 only: both saved step 3, both stop with 128 + SIGUSR1
        slurm = reports["slurm"]
        assert slurm["stop"] is True and slurm["exit_code"] == 128 + signal.SIGUSR1 and slurm["requeued"] is True
        assert slurm["saved"] == "s_0000_00000003.pth"
    assert results[0].reports()["slurm"]["latest"] == "s_0000_00000003.pth"
    assert log.read_text() == "requeue 4242\n"  # once: rank 0 alone asks SLURM
    for r in results:
        reports = r.reports()
        # rank 0's failing save raises on every rank: nobody waits in the barrier
        err = reports["save_error"]
        assert not err["ok"] and err["error"] == "CheckpointWriteError" and err["exit_code"] == 1
        assert "No space left on device" in err["message"]
        if r.rank == 1:
            assert err["message"].startswith("rank 0 could not save")
    assert not list((tmp_path / "full").glob("*.pth")), "a failed save left a file under a final name"


@pytest.mark.slow
def test_rank_from_another_environment_is_refused_naming_rank_and_package(tmp_path: Path, other_numpy_python: str) -> None:
    import numpy

    commands = worker_commands(2, tmp_path, ["consistency", "manager_resume"], pythons=[sys.executable, other_numpy_python])
    results = run_ranks(commands, envs=[rank_env(), rank_env()])
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
        for scenario in ("consistency", "manager_resume"):
            doc = r.reports()[scenario]
            assert doc["ok"] is False and doc["error"] == "EnvironmentMismatch" and doc["exit_code"] == 1, doc
            message = doc["message"]
            assert "rank 1 (host " in message and "differs from rank 0" in message, message
            assert f"packages.numpy {numpy.__version__} -> {OTHER_NUMPY}" in message, message
            assert str(OTHER_VENV) in message  # where rank 1 runs from
            assert "\n" not in message


def test_check_consistency_without_a_process_group_checks_nothing() -> None:
    from envkit.distributed import check_consistency

    report = check_consistency()
    assert report.ok and report.world_size == 1
