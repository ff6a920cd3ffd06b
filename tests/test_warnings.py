"""Drift warnings point at the user's line that called envkit, whatever the depth inside envkit."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import envkit
from envkit.errors import EnvironmentDriftWarning, warn_at_caller
from envkit.policy import Policy

torch = pytest.importorskip("torch")

# `determinism.*` rows are info under every preset; this project's policy makes them warn, so a
# real difference (cudnn.benchmark set after the save) gives a drift warning through every path.
WARN_ON_FLAGS = Policy.of("compatible", {"determinism.*": "warn"})


@pytest.fixture
def benchmark_flipped() -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _drift(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, EnvironmentDriftWarning)]


def _here() -> int:
    """The line number of the line that called _here()."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def test_guard_warns_at_the_callers_line(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2)}, path)  # unstamped: a warning under the default policy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        envkit.guard(path); line = _here()
    (w,) = _drift(caught)
    assert (w.filename, w.lineno) == (__file__, line)


def test_load_warns_at_the_callers_line(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2)}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        envkit.load(path); line = _here()
    (w,) = _drift(caught)
    assert (w.filename, w.lineno) == (__file__, line)


def test_load_of_a_stamped_file_warns_at_the_callers_line(tmp_path: Path, benchmark_flipped: None) -> None:
    path = tmp_path / "stamped.pth"
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    envkit.save({"w": torch.zeros(2)}, path)
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        envkit.load(path, policy=WARN_ON_FLAGS); line = _here()
    (w,) = _drift(caught)
    assert (w.filename, w.lineno) == (__file__, line) and "determinism.cudnn_benchmark" in str(w.message)


def test_manager_resume_warns_at_the_callers_line(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    with envkit.CheckpointManager(tmp_path / "ck", project="p", policy=WARN_ON_FLAGS) as mgr:
        mgr.save(epoch=1, step=1, model=model)
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not before
    try:
        with (
            envkit.CheckpointManager(tmp_path / "ck", project="p", policy=WARN_ON_FLAGS) as mgr,
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            info = mgr.resume(model=model); line = _here()
    finally:
        torch.backends.cudnn.benchmark = before
    assert info is not None
    (w,) = _drift(caught)
    assert (w.filename, w.lineno) == (__file__, line)


_SHARDED = """
import os, sys, warnings
import torch, torch.distributed as dist
import envkit
from envkit.policy import Policy
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
policy = Policy.of("compatible", {"determinism.*": "warn"})
model = torch.nn.Linear(2, 2)
with envkit.CheckpointManager(sys.argv[1], project="p", policy=policy, sharded=True) as mgr:
    mgr.save(epoch=1, step=1, model=model)
torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
warnings.simplefilter("always")
with envkit.CheckpointManager(sys.argv[1], project="p", policy=policy, sharded=True) as mgr:
    info = mgr.resume(model=model)
assert info is not None
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_sharded_resume_warns_at_the_callers_line(tmp_path: Path) -> None:
    """A real one-rank gloo group (sharded checkpoints need one): resume -> load_sharded -> guard."""
    script = tmp_path / "sharded_train.py"
    script.write_text(_SHARDED)
    line = 1 + _SHARDED.splitlines().index("    info = mgr.resume(model=model)")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ck"), str(tmp_path / "store")],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
        timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    drift = [ln for ln in done.stderr.splitlines() if "EnvironmentDriftWarning" in ln]
    assert drift and all(ln.startswith(f"{script}:{line}: ") for ln in drift), done.stderr[-2000:]


@pytest.mark.slow
def test_warn_at_caller_skips_every_envkit_frame_in_a_real_script(tmp_path: Path) -> None:
    """From a script run as __main__ (the usual train.py), through envkit.load -> guard -> warn."""
    ckpt = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2)}, ckpt)
    script = tmp_path / "train.py"
    script.write_text(
        "import warnings, envkit\n"
        "warnings.simplefilter('always')\n"
        f"state = envkit.load({str(ckpt)!r})\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path,
        env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
    )
    assert f"{script}:3: EnvironmentDriftWarning" in done.stderr


def test_warn_at_caller_from_outside_envkit_is_the_direct_caller() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_at_caller("x", UserWarning); line = _here()
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)
